//! WireGuard's cross-platform userspace API (`get=1` / `set=1` on a Unix socket), as
//! wireguard-go serves it, so `wg` and `wg-quick` work unchanged.
