"""A hand-assembled seccomp filter (classic BPF) for sandboxed containers.

bubblewrap loads it with ``--seccomp FD`` before it runs the container's first process, and
every process in the sandbox inherits it. It blocks what a sandbox escape needs and a Python
function does not: mounting, nested namespaces, tracing other processes, loading BPF
programs or kernel modules, the kernel keyring, and performance counters.

Why hand-assembled rather than libseccomp: the program is about sixty instructions, it is
checked by tests that run it in a real sandbox, and it spares every host a C library and its
Python bindings. Layout of the program::

    load arch;  x86_64 → X86,  aarch64 → ARM,  anything else → KILL_PROCESS
    X86: load nr; nr >= 0x40000000 (x32 ABI) → ERRNO(EPERM); nr == each blocked → ERRNO(EPERM);
         clone/unshare: flags arg & CLONE_NEW* → EPERM; clone3 → ENOSYS; else ALLOW
    ARM: the same with aarch64's numbers

``clone3`` takes its flags in a struct that a filter cannot read, so it answers ``ENOSYS``:
glibc and Python then fall back to ``clone``, whose flags the filter does check.
"""

from __future__ import annotations

import errno
import struct

__all__ = ["BLOCKED_SYSCALLS", "NAMESPACE_FLAGS", "filter_program", "supported_arch"]

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # args[0], low 32 bits on little-endian machines (both arches here)

_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

_SECCOMP_RET_KILL_PROCESS = 0x80000000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_ALLOW = 0x7FFF0000

# BPF opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)

# Syscalls that fail with EPERM whatever their arguments, by architecture.
BLOCKED_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "mount": 165,
        "umount2": 166,
        "pivot_root": 155,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "bpf": 321,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "perf_event_open": 298,
        "setns": 308,
        "kexec_load": 246,
        "kexec_file_load": 320,
        "init_module": 175,
        "finit_module": 313,
        "delete_module": 176,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "userfaultfd": 323,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "move_mount": 429,
        "open_tree": 428,
        "mount_setattr": 442,
        "swapon": 167,
        "swapoff": 168,
        "reboot": 169,
        "acct": 163,
        "chroot": 161,
    },
    "aarch64": {
        "mount": 40,
        "umount2": 39,
        "pivot_root": 41,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "bpf": 280,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "perf_event_open": 241,
        "setns": 268,
        "kexec_load": 104,
        "kexec_file_load": 294,
        "init_module": 105,
        "finit_module": 273,
        "delete_module": 106,
        "open_by_handle_at": 265,
        "name_to_handle_at": 264,
        "userfaultfd": 282,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "move_mount": 429,
        "open_tree": 428,
        "mount_setattr": 442,
        "swapon": 224,
        "swapoff": 225,
        "reboot": 142,
        "acct": 89,
        "chroot": 51,
    },
}
# Allowed unless their flags (first argument) ask for a new namespace.
_FLAG_CHECKED = {"x86_64": {"clone": 56, "unshare": 272}, "aarch64": {"clone": 220, "unshare": 97}}
_CLONE3 = {"x86_64": 435, "aarch64": 435}
_ARCHES = {"x86_64": _AUDIT_ARCH_X86_64, "aarch64": _AUDIT_ARCH_AARCH64}


def supported_arch(machine: str) -> bool:
    """True when ``machine`` (``platform.machine()``) has syscall numbers in the filter."""
    return machine in _ARCHES


def _insn(code: int, jt: int, jf: int, k: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k & 0xFFFFFFFF)


def _arch_section(arch: str) -> list[tuple[int, int, int, int]]:
    """Instructions for one architecture; jumps are relative and stay inside the section."""
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    enosys = _SECCOMP_RET_ERRNO | errno.ENOSYS
    blocked = sorted(BLOCKED_SYSCALLS[arch].values())
    checked = _FLAG_CHECKED[arch]
    body: list[tuple[int, int, int, int]] = [_insn(_LD_W_ABS, 0, 0, _OFF_NR)]
    # Tail, in this order: [RET EPERM] [RET ENOSYS] [LD arg0] [JSET ns → EPERM2] [RET ALLOW]
    #                      [RET EPERM2] [RET ALLOW]
    # Every test below jumps forward to one of them; compute offsets from the end.
    tests: list[tuple[str, int]] = []
    if arch == "x86_64":
        tests.append(("x32", _X32_SYSCALL_BIT))
    tests += [("block", nr) for nr in blocked]
    tests.append(("clone3", _CLONE3[arch]))
    tests += [("flags", nr) for nr in sorted(checked.values())]
    n = len(tests)
    # Positions (relative to the first test): tests 0..n-1, then at n: RET ALLOW (fallthrough),
    # n+1: RET EPERM, n+2: RET ENOSYS, n+3: LD arg0, n+4: JSET, n+5: RET ALLOW, n+6: RET EPERM.
    _ret_allow, ret_eperm, ret_enosys, ld_arg = n, n + 1, n + 2, n + 3
    for i, (kind, value) in enumerate(tests):
        target = {"x32": ret_eperm, "block": ret_eperm, "clone3": ret_enosys, "flags": ld_arg}[kind]
        op = _JGE_K if kind == "x32" else _JEQ_K
        body.append(_insn(op, target - i - 1, 0, value))
    body.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    body.append(_insn(_RET_K, 0, 0, eperm))
    body.append(_insn(_RET_K, 0, 0, enosys))
    body.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0_LO))
    body.append(_insn(_JSET_K, 1, 0, NAMESPACE_FLAGS))
    body.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    body.append(_insn(_RET_K, 0, 0, eperm))
    return body


def filter_program() -> bytes:
    """The filter as ``struct sock_filter[]`` bytes, the format ``bwrap --seccomp`` reads."""
    x86 = _arch_section("x86_64")
    arm = _arch_section("aarch64")
    prog: list[tuple[int, int, int, int]] = [_insn(_LD_W_ABS, 0, 0, _OFF_ARCH)]
    # [0] LD arch  [1] JEQ x86 → X86  [2] JEQ arm → ARM  [3] RET KILL  [4..] X86  [..] ARM
    prog.append(_insn(_JEQ_K, 2, 0, _AUDIT_ARCH_X86_64))  # → index 4
    prog.append(_insn(_JEQ_K, 1 + len(x86), 0, _AUDIT_ARCH_AARCH64))  # → ARM
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS))
    prog += x86
    prog += arm
    for code, jt, jf, _k in prog:
        assert 0 <= jt <= 255 and 0 <= jf <= 255, "jump out of range"
        assert code >= 0
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)
