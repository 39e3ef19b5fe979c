//! The few `bpf(2)` commands the AF_XDP backend needs, and an assembler for its XDP program.
//!
//! The program is small (see [`super::xdp_prog`]), so it is written here as eBPF
//! instructions rather than in C: the build needs no clang, no BPF linker and no nightly
//! toolchain, and there is no object file to reproduce. The kernel's verifier checks it at
//! load time; the unit tests load it and run it on crafted frames (`BPF_PROG_TEST_RUN`).
//!
//! Maps and programs are plain file descriptors ([`OwnedFd`]); an XDP program is attached
//! through a BPF link, which the kernel detaches when the last descriptor of the link
//! closes, so a killed process leaves nothing attached.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// Commands (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Map types (enum bpf_map_type).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
    /// `BPF_MAP_TYPE_XSKMAP`.
    XskMap = 17,
}

/// `BPF_F_NO_PREALLOC`, required for LPM tries.
pub const F_NO_PREALLOC: u32 = 1;

const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// XDP attach modes (`XDP_FLAGS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// On the generic receive path, after the SKB is built (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Generic => 1 << 1,
            XdpMode::Native => 1 << 2,
        }
    }

    /// As logged and in config (`native`, `generic`).
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// The attribute union of `bpf(2)`: every command reads a prefix of it; the rest must be 0.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised, 8-aligned buffer at least as large as every
    // attribute struct we use; the pointers stored in it by the callers point to live
    // buffers that outlive this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sys_bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    /// Create a map.
    pub fn create(
        kind: MapType,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
    ) -> io::Result<Map> {
        let mut a = Attr::new();
        a.u32(0, kind as u32)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .u32(16, flags);
        let n = name.len().min(15);
        a.0[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Map {
            fd: sys_bpf_fd(BPF_MAP_CREATE, &mut a)?,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    /// The descriptor, for a program's `ld_map_fd`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn key_attr(&self, key: &[u8]) -> io::Result<Attr> {
        if key.len() != self.key_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BPF map key size",
            ));
        }
        let mut a = Attr::new();
        a.u32(0, self.raw_fd() as u32).u64(8, key.as_ptr() as u64);
        Ok(a)
    }

    /// Insert or replace `key` → `value`.
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if value.len() != self.value_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BPF map value size",
            ));
        }
        let mut a = self.key_attr(key)?;
        a.u64(16, value.as_ptr() as u64).u64(24, 0);
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
    }

    /// Remove `key`; `Ok(false)` if it was not there.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        let mut a = self.key_attr(key)?;
        match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> io::Result<bool> {
        let mut value = vec![0u8; self.value_size];
        let mut a = self.key_attr(key)?;
        a.u64(16, value.as_mut_ptr() as u64);
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every key (not for XSK maps, whose lookups user space cannot do).
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut next = vec![0u8; self.key_size];
        loop {
            let mut a = Attr::new();
            a.u32(0, self.raw_fd() as u32);
            if let Some(prev) = out.last() {
                let prev: &Vec<u8> = prev;
                a.u64(8, prev.as_ptr() as u64);
            }
            a.u64(16, next.as_mut_ptr() as u64);
            match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => out.push(next.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A loaded XDP program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Load `insns` as an XDP program. The verifier's log is in the error if it refuses.
    pub fn load_xdp(name: &str, insns: &[Insn]) -> io::Result<Program> {
        let license = b"Dual BSD/GPL\0";
        let mut log = vec![0u8; 1 << 16];
        let load = |log_level: u32, log: &mut [u8]| {
            let mut a = Attr::new();
            a.u32(0, BPF_PROG_TYPE_XDP)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, if log_level > 0 { log.len() as u32 } else { 0 })
                .u64(
                    32,
                    if log_level > 0 {
                        log.as_mut_ptr() as u64
                    } else {
                        0
                    },
                )
                .u32(68, BPF_XDP);
            let n = name.len().min(15);
            a.0[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
            sys_bpf_fd(BPF_PROG_LOAD, &mut a)
        };
        match load(0, &mut log) {
            Ok(fd) => Ok(Program { fd }),
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                // Load again with the verifier's log, to say why.
                let _ = load(1, &mut log);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: Vec<&str> = text.lines().rev().take(12).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "the verifier refused the XDP program ({e}): {}",
                        tail.join(" | ")
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Attach to interface `ifindex` in `mode` through a BPF link; dropping the link (or the
    /// process ending) detaches it.
    pub fn attach_xdp(&self, ifindex: u32, mode: XdpMode) -> io::Result<Link> {
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, ifindex)
            .u32(8, BPF_XDP)
            .u32(12, mode.flags());
        Ok(Link {
            _fd: sys_bpf_fd(BPF_LINK_CREATE, &mut a)?,
        })
    }

    /// Run the program once on `frame` (`BPF_PROG_TEST_RUN`), as received on queue
    /// `rx_queue` of interface `ifindex`; the XDP action it returned.
    pub fn test_run(&self, frame: &[u8], ifindex: u32, rx_queue: u32) -> io::Result<u32> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let mut ctx = [0u32; 6];
        ctx[1] = frame.len() as u32;
        ctx[3] = ifindex;
        ctx[4] = rx_queue;
        let mut out = vec![0u8; frame.len() + 256];
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u32(8, frame.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, frame.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64)
            .u32(32, 1)
            .u32(40, std::mem::size_of_val(&ctx) as u32)
            .u64(48, ctx.as_ptr() as u64);
        sys_bpf(BPF_PROG_TEST_RUN, &mut a)?;
        Ok(a.get_u32(4))
    }
}

/// An attached XDP program; detached when dropped.
#[derive(Debug)]
pub struct Link {
    _fd: OwnedFd,
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(pub u8);

/// r0: return value, helper results.
pub const R0: Reg = Reg(0);
/// r1–r5: helper arguments (clobbered by calls).
pub const R1: Reg = Reg(1);
/// Argument 2.
pub const R2: Reg = Reg(2);
/// Argument 3.
pub const R3: Reg = Reg(3);
/// Argument 4.
pub const R4: Reg = Reg(4);
/// Argument 5.
pub const R5: Reg = Reg(5);
/// r6–r9: preserved across calls.
pub const R6: Reg = Reg(6);
/// Preserved.
pub const R7: Reg = Reg(7);
/// Preserved.
pub const R8: Reg = Reg(8);
/// Preserved.
pub const R9: Reg = Reg(9);
/// The frame pointer (read-only).
pub const R10: Reg = Reg(10);

/// Access size of a load or store.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    /// 1 byte.
    B = 0x10,
    /// 2 bytes.
    H = 0x08,
    /// 4 bytes.
    W = 0x00,
    /// 8 bytes.
    DW = 0x18,
}

/// Conditional jumps.
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    /// ==
    Eq = 0x10,
    /// > (unsigned)
    Gt = 0x20,
    /// >= (unsigned)
    Ge = 0x30,
    /// < (unsigned)
    Lt = 0xa0,
    /// !=
    Ne = 0x50,
}

/// Helpers the program calls (enum bpf_func_id).
pub mod helper {
    /// `bpf_map_lookup_elem(map, key)`.
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `bpf_redirect_map(map, key, flags)`.
    pub const REDIRECT_MAP: i32 = 51;
}

/// XDP actions.
pub mod action {
    /// Drop, and say it was an error.
    pub const ABORTED: u32 = 0;
    /// Drop.
    pub const DROP: u32 = 1;
    /// To the kernel's stack.
    pub const PASS: u32 = 2;
    /// Redirected (to an XSK).
    pub const REDIRECT: u32 = 4;
}

const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU64: u8 = 0x07;
const BPF_MEM: u8 = 0x60;
const BPF_IMM: u8 = 0x00;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_ADD: u8 = 0x00;
const BPF_AND: u8 = 0x50;
const BPF_MOV: u8 = 0xb0;
const BPF_END: u8 = 0xd0;
const BPF_TO_BE: u8 = 0x08;
const BPF_JA: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
const BPF_PSEUDO_MAP_FD: u8 = 1;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src.0 << 4) | (dst.0 & 0xf),
        off,
        imm,
    }
}

/// A jump target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Builds a program: instructions, with jumps to labels resolved at the end.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    /// A new label, to be placed with [`Asm::bind`].
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// The next instruction is `l`'s target.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.insns
            .push(insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0));
    }

    /// `dst = imm`.
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.insns
            .push(insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, R0, 0, imm));
    }

    /// `dst += imm`.
    pub fn add_imm(&mut self, dst: Reg, imm: i32) {
        self.insns
            .push(insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, R0, 0, imm));
    }

    /// `dst &= imm`.
    pub fn and_imm(&mut self, dst: Reg, imm: i32) {
        self.insns
            .push(insn(BPF_ALU64 | BPF_AND | BPF_K, dst, R0, 0, imm));
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.insns
            .push(insn(BPF_LDX | BPF_MEM | size as u8, dst, src, off, 0));
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.insns
            .push(insn(BPF_STX | BPF_MEM | size as u8, dst, src, off, 0));
    }

    /// `dst = map` (the two-instruction load of a map descriptor).
    pub fn load_map(&mut self, dst: Reg, map: &Map) {
        self.insns.push(insn(
            BPF_LD | BPF_IMM | Size::DW as u8,
            dst,
            Reg(BPF_PSEUDO_MAP_FD),
            0,
            map.raw_fd(),
        ));
        self.insns.push(insn(0, R0, R0, 0, 0));
    }

    /// `if dst <cond> imm goto l`.
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.insns
            .push(insn(BPF_JMP | cond as u8 | BPF_K, dst, R0, 0, imm));
    }

    /// `if dst <cond> src goto l`.
    pub fn jump_reg(&mut self, cond: Cond, dst: Reg, src: Reg, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.insns
            .push(insn(BPF_JMP | cond as u8 | BPF_X, dst, src, 0, 0));
    }

    /// `if (u32)dst <cond> (u32)imm goto l`: compares the low 32 bits, so an immediate with
    /// its top bit set means the same as the loaded word (no sign extension).
    pub fn jump32_imm(&mut self, cond: Cond, dst: Reg, imm: i32, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.insns
            .push(insn(BPF_JMP32 | cond as u8 | BPF_K, dst, R0, 0, imm));
    }

    /// `dst = htons(dst)`: the low 16 bits from network to host order (and back).
    pub fn be16(&mut self, dst: Reg) {
        self.insns
            .push(insn(BPF_ALU | BPF_END | BPF_TO_BE, dst, R0, 0, 16));
    }

    /// `goto l`.
    pub fn jump(&mut self, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.insns.push(insn(BPF_JMP | BPF_JA, R0, R0, 0, 0));
    }

    /// Call helper `id`.
    pub fn call(&mut self, id: i32) {
        self.insns.push(insn(BPF_JMP | BPF_CALL, R0, R0, 0, id));
    }

    /// `r0 = bpf_map_lookup_elem(map, r10 + key_at)`, the key on the stack (r1-r5 clobbered).
    pub fn map_lookup(&mut self, map: &Map, key_at: i16) {
        self.load_map(R1, map);
        self.mov(R2, R10);
        self.add_imm(R2, i32::from(key_at));
        self.call(helper::MAP_LOOKUP_ELEM);
    }

    /// Copy `words` 32-bit words from `src + off` to the stack at `r10 + at` (through r5).
    pub fn copy_words(&mut self, src: Reg, off: i16, words: i16, at: i16) {
        for i in 0..words {
            self.load(Size::W, R5, src, off + 4 * i);
            self.store(Size::W, R10, at + 4 * i, R5);
        }
    }

    /// Return r0.
    pub fn exit(&mut self) {
        self.insns.push(insn(BPF_JMP | BPF_EXIT, R0, R0, 0, 0));
    }

    /// The program, jumps resolved.
    ///
    /// # Panics
    /// If a label was used but never bound (a bug in the program's builder).
    pub fn finish(mut self) -> Vec<Insn> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].expect("every label is bound");
            self.insns[at].off =
                i16::try_from(target as isize - at as isize - 1).expect("jumps are short");
        }
        self.insns
    }
}
