#!/usr/bin/env bash
# Captures the fuzz seed corpus (fuzz/seeds/TARGET/) from real traffic in two network
# namespaces of its own: wireguard-go on both ends of a veth, babeld on the tunnel and on the
# veth, a ping through the tunnel, `wg set` sessions recorded at a socket. Every packet is a
# file. Run as root; removes what it created. Needs wireguard-go, wg, babeld, tcpdump,
# python3 (scripts/install-deps.sh).
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
out=fuzz/seeds
tmp=$(mktemp -d)
a=fzseed-a-$$ b=fzseed-b-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add fzs0 netns "$a" type veth peer name fzs1 netns "$b"
ip -n "$a" addr add 192.168.99.1/24 dev fzs0; ip -n "$b" addr add 192.168.99.2/24 dev fzs1
for n in "$a" "$b"; do ip -n "$n" link set lo up; done
ip -n "$a" link set fzs0 up; ip -n "$b" link set fzs1 up
wg genkey > "$tmp/ka"; wg genkey > "$tmp/kb"
for side in a b; do
    ns=${!side}
    ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go "wgs$side" >"$tmp/wg$side.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 50); do [[ -S /var/run/wireguard/wgsa.sock && -S /var/run/wireguard/wgsb.sock ]] && break; sleep 0.1; done
ip netns exec "$a" wg set wgsa private-key "$tmp/ka" listen-port 51820 \
    peer "$(wg pubkey < "$tmp/kb")" endpoint 192.168.99.2:51820 allowed-ips 10.9.0.2/32,fe80::/64,ff02::1:6/128 persistent-keepalive 1
ip netns exec "$b" wg set wgsb private-key "$tmp/kb" listen-port 51820 \
    peer "$(wg pubkey < "$tmp/ka")" endpoint 192.168.99.1:51820 allowed-ips 10.9.0.1/32,fe80::/64,ff02::1:6/128
ip -n "$a" addr add 10.9.0.1/24 dev wgsa; ip -n "$a" addr add fe80::1/64 dev wgsa
ip -n "$b" addr add 10.9.0.2/24 dev wgsb; ip -n "$b" addr add fe80::2/64 dev wgsb
ip -n "$a" link set wgsa up; ip -n "$b" link set wgsb up
ip netns exec "$a" tcpdump -i fzs0 -w "$tmp/veth.pcap" -U -s 2000 2>/dev/null & pids+=($!)
ip netns exec "$a" tcpdump -i wgsa -w "$tmp/tun.pcap" -U -s 2000 2>/dev/null & pids+=($!)
sleep 1
for side in a b; do
    ns=${!side}
    veth=fzs0; [[ $side == b ]] && veth=fzs1
    ip netns exec "$ns" babeld -I "$tmp/babeld$side.pid" -S "$tmp/state$side" -d 0 \
        -C "interface wgs$side type tunnel hello-interval 1" \
        -C "interface $veth" -C "redistribute local ip 10.9.0.0/24" \
        >"$tmp/babeld$side.log" 2>&1 & pids+=($!)
done
ip netns exec "$a" ping -c 5 -i 0.3 -s 1200 10.9.0.2 >/dev/null || true
ip netns exec "$a" ping -c 3 -i 0.3 10.9.0.2 >/dev/null || true
ip netns exec "$a" ping -c 3 -i 0.3 -t 1 10.9.0.9 >/dev/null 2>&1 || true
sleep 4
# wg set sessions as wg writes them: a socket that records one request and answers errno=0.
python3 - "$tmp" <<'PY'
import os, socket, subprocess, sys, threading
tmp = sys.argv[1]
path = "/var/run/wireguard/fzsrec.sock"
if os.path.exists(path): os.unlink(path)
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(4)
reqs = []
def serve():
    # wg connects once to see that the interface exists, then again with its request.
    while len(reqs) < 3:
        c, _ = s.accept(); data = b""
        while not data.endswith(b"\n\n"):
            chunk = c.recv(65536)
            if not chunk: break
            data += chunk
        if data:
            reqs.append(data); c.sendall(b"errno=0\n\n")
        c.close()
t = threading.Thread(target=serve, daemon=True); t.start()
key = open(f"{tmp}/ka").read().strip()
pub = subprocess.run(["wg", "pubkey"], input=key.encode(), capture_output=True).stdout.decode().strip()
psk = subprocess.run(["wg", "genpsk"], capture_output=True).stdout.decode().strip()
open(f"{tmp}/psk", "w").write(psk)
for args in (["private-key", f"{tmp}/ka", "listen-port", "51820", "fwmark", "0x77"],
             ["peer", pub, "preshared-key", f"{tmp}/psk", "endpoint", "[fd00::1]:51820", "allowed-ips", "10.0.0.0/8,fd00::/8", "persistent-keepalive", "25"],
             ["peer", pub, "remove"]):
    subprocess.run(["wg", "set", "fzsrec"] + args, capture_output=True, timeout=10)
t.join(10); os.unlink(path)
os.makedirs("fuzz/seeds/uapi_set", exist_ok=True)
for i, r in enumerate(reqs):
    open(f"fuzz/seeds/uapi_set/wg-set-{i}", "wb").write(r)
PY
sleep 0.5
python3 - "$tmp" "$out" <<'PY'
import os, struct, sys
tmp, out = sys.argv[1], sys.argv[2]
def packets(path):
    b = open(path, "rb").read()
    le = b[:4] == b"\xd4\xc3\xb2\xa1"
    e = "<" if le else ">"
    link = struct.unpack(e + "I", b[20:24])[0]
    i = 24
    while i + 16 <= len(b):
        _, _, incl, _ = struct.unpack(e + "IIII", b[i:i + 16])
        yield link, b[i + 16:i + 16 + incl]
        i += 16 + incl
def save(target, name, data, seen={}):
    d = os.path.join(out, target); os.makedirs(d, exist_ok=True)
    key = (target, data)
    if key in seen or len(os.listdir(d)) >= 40: return
    seen[key] = 1
    open(os.path.join(d, f"{name}-{len(os.listdir(d))}"), "wb").write(data)
def udp_of(ip):
    v = ip[0] >> 4
    if v == 4 and ip[9] == 17:
        h = (ip[0] & 15) * 4; return ip[h:h + 8], ip[h + 8:]
    if v == 6 and ip[6] == 17:
        return ip[40:48], ip[48:]
    return None, None
for link, f in packets(f"{tmp}/veth.pcap"):
    save("xdp_frame", "frame", f)
    ip = f[14:]
    if not ip: continue
    save("wire_ip", "underlay", ip)
    udp, pl = udp_of(ip)
    if udp is None: continue
    port = struct.unpack(">H", udp[2:4])[0]
    if port == 51820:
        kind = {1: "initiation", 2: "response", 3: "cookie", 4: "transport"}.get(pl[0] if pl else 0, "wg")
        save("wire_wg", kind, pl)
    elif port == 6696:
        save("babel_packet", "babeld", pl); save("babel_auth", "babeld", pl)
        if ip[0] >> 4 == 6: save("babel_punt", "babeld-veth", ip)
for link, p in packets(f"{tmp}/tun.pcap"):
    ip = p if link == 101 else p[16:] if link == 276 else p[4:] if link == 0 else p
    if not ip or ip[0] >> 4 not in (4, 6): continue
    save("wire_ip", "inner", ip); save("tun_offload", "inner", ip)
    if (ip[0] >> 4 == 4 and ip[9] == 1) or (ip[0] >> 4 == 6 and ip[6] == 58):
        save("wire_icmp", "icmp", ip)
    udp, pl = udp_of(ip)
    if udp is not None and struct.unpack(">H", udp[2:4])[0] == 6696 and ip[0] >> 4 == 6:
        save("babel_punt", "babeld-tunnel", ip)
for t in sorted(os.listdir(out)):
    print(t, len(os.listdir(os.path.join(out, t))))
PY
# The pipeline target (fuzz/seeds/pipeline) has hand-written op sequences, not captures.
# The control channel: the protocol's pinned encodings (dataplane/src/ctl/proto.rs), one
# message body each. The configuration loaders: the example configuration.
python3 - "$out" <<'PY'
import os, re, sys
out = sys.argv[1]
src = open("dataplane/src/ctl/proto.rs").read()
pinned = src[src.index("const PINNED"):]
pinned = pinned[:pinned.index("];")]
d = os.path.join(out, "ctl_decode"); os.makedirs(d, exist_ok=True)
for i, h in enumerate(re.findall(r'"([0-9a-fK]+)"', pinned)):
    open(os.path.join(d, f"pinned-{i}"), "wb").write(bytes.fromhex(h.replace("K", "ab" * 32))[4:])
d = os.path.join(out, "config_toml"); os.makedirs(d, exist_ok=True)
open(os.path.join(d, "example.toml"), "w").write(open("docs/isthmus.example.toml").read())
PY
chmod -R u=rwX,go=rX "$out"
