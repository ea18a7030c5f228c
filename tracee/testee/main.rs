//! `tracee-testee MODE [ARGS]`: a small program for the tracee crate's integration tests
//! to seize. Every mode reports on stdout, one line at a time, and takes commands on
//! stdin, so that tests synchronise on handshakes, never on sleeps.
//!
//! | mode          | does                                                                  |
//! | ------------- | --------------------------------------------------------------------- |
//! | `read`        | `ready`, then one raw `read(0)`; prints `read N DATA`                 |
//! | `sleep MS`    | `ready`, then one raw `nanosleep(MS)`; prints `slept RET ERRNO`        |
//! | `churn N`     | N threads that keep creating and joining short-lived threads; `ready`; answers `ping` with `pong` |
//! | `ymm`         | `ready`, loads known values into ymm0/ymm1, blocks in `read(0)` inside the same asm block, prints `ymm HEX0 HEX1` (or `noavx`) |
//! | `memory`      | maps 4 pages (0x11.., read-only 0x22.., unmapped, 0x44..); prints `mem ADDR`; `page1` prints its first 16 bytes in hex |
//! | `fds`         | a pipe with `pipe-data` in it, a dup of its write end, /dev/null; prints `fds R W W2 NULL`; waits for EOF |
//! | `signals`     | counts SIGUSR1 (SA_RESTART handler); `ready`; `count` prints `usr1 N`  |
//! | `sigstop`     | prints `stopping`, raises SIGSTOP, then prints `continued`             |
//! | `tracer PID`  | PTRACE_SEIZEs PID; prints `traced` (or `error ERRNO`); waits for EOF   |
//! | `zombie-leader` | a second thread prints `ready` and answers one line with `got LINE`, then exits the process; the main thread exits alone (raw `exit`) and stays a zombie |

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test reads our lines; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn for_each_line(mut f: impl FnMut(&str)) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        f(line.trim());
    }
}

fn mode_read() {
    say("ready");
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        say(&format!("read -1 errno {}", errno()));
    } else {
        let data = String::from_utf8_lossy(&buf[..n as usize]);
        say(&format!("read {n} {}", data.trim_end()));
    }
}

fn mode_sleep(ms: u64) {
    say("ready");
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_nanosleep,
            &ts,
            std::ptr::null_mut::<libc::timespec>(),
        )
    };
    let err = if ret < 0 { errno() } else { 0 };
    say(&format!("slept {ret} {err}"));
}

fn mode_churn(workers: usize) {
    for _ in 0..workers {
        std::thread::spawn(|| {
            loop {
                let child = std::thread::spawn(|| std::hint::black_box(1 + 1));
                let _ = child.join();
            }
        });
    }
    say("ready");
    for_each_line(|line| {
        if line == "ping" {
            say("pong");
        }
    });
}

/// Loads `p0`/`p1` into ymm0/ymm1, blocks in `read(0, buf, 1)` and stores ymm0/ymm1
/// afterwards, all in one asm block so no compiled code can touch the registers between.
///
/// # Safety
/// The CPU must support AVX; the pointers must be valid for 32-byte reads/writes.
#[target_feature(enable = "avx")]
unsafe fn ymm_across_read(
    p0: &[u8; 32],
    p1: &[u8; 32],
    o0: &mut [u8; 32],
    o1: &mut [u8; 32],
) -> i64 {
    let mut buf = [0u8; 1];
    let ret: i64;
    // SAFETY: the caller guarantees AVX; every pointer refers to a live 32-byte array (or
    // the 1-byte `buf`); `syscall` clobbers only rax, rcx and r11, declared here.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm0, [{p0}]",
            "vmovdqu ymm1, [{p1}]",
            "syscall",
            "vmovdqu [{o0}], ymm0",
            "vmovdqu [{o1}], ymm1",
            p0 = in(reg) p0.as_ptr(),
            p1 = in(reg) p1.as_ptr(),
            o0 = in(reg) o0.as_mut_ptr(),
            o1 = in(reg) o1.as_mut_ptr(),
            inlateout("rax") libc::SYS_read => ret,
            in("rdi") 0,
            in("rsi") buf.as_mut_ptr(),
            in("rdx") 1,
            out("rcx") _,
            out("r11") _,
            out("ymm0") _,
            out("ymm1") _,
            options(nostack),
        );
    }
    ret
}

fn mode_ymm() {
    if !std::arch::is_x86_feature_detected!("avx") {
        say("noavx");
        return;
    }
    let p0: [u8; 32] = std::array::from_fn(|i| 0xa0 + i as u8);
    let p1: [u8; 32] = std::array::from_fn(|i| 0x50 + i as u8);
    let (mut o0, mut o1) = ([0u8; 32], [0u8; 32]);
    say("ready");
    // SAFETY: AVX was detected above; the arrays are live locals of the right size.
    let ret = unsafe { ymm_across_read(&p0, &p1, &mut o0, &mut o1) };
    say(&format!("ymm {} {} {ret}", hex(&o0), hex(&o1)));
}

fn mode_memory() {
    const PAGE: usize = 4096;
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap failed");
    let base = base.cast::<u8>();
    let page = |i: usize| base.wrapping_add(i * PAGE);
    for (i, value) in [(0, 0x11), (1, 0x22), (3, 0x44)] {
        // SAFETY: page `i` lies inside the 4-page mapping just created, which nothing
        // else uses, and it is still read-write.
        let bytes = unsafe { std::slice::from_raw_parts_mut(page(i), PAGE) };
        bytes.fill(value);
    }
    // SAFETY: page 1 is part of our own mapping; no Rust reference to it is alive.
    let rc = unsafe { libc::mprotect(page(1).cast(), PAGE, libc::PROT_READ) };
    assert_eq!(rc, 0, "mprotect");
    // SAFETY: page 2 is part of our own mapping; no Rust reference to it is alive.
    let rc = unsafe { libc::munmap(page(2).cast(), PAGE) };
    assert_eq!(rc, 0, "munmap");
    say(&format!("mem {:x}", base as usize));
    let page1 = page(1);
    for_each_line(|line| {
        if line == "page1" {
            // SAFETY: page 1 stays mapped (read-only) for the life of the process.
            let bytes = unsafe { std::slice::from_raw_parts(page1, 16) };
            say(&format!("page1 {}", hex(bytes)));
        }
    });
}

fn mode_fds() {
    let mut p = [0i32; 2];
    // SAFETY: `p` has room for the two fds pipe() writes.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: dup of an fd we own.
    let w2 = unsafe { libc::dup(p[1]) };
    // SAFETY: the path is a NUL-terminated literal.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    assert!(w2 >= 0 && null >= 0);
    let data = b"pipe-data";
    // SAFETY: `data` is valid for reads of its length.
    let written = unsafe { libc::write(p[1], data.as_ptr().cast(), data.len()) };
    assert_eq!(written, data.len() as isize);
    say(&format!("fds {} {} {w2} {null}", p[0], p[1]));
    for_each_line(|_| {});
}

static USR1: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1.fetch_add(1, Ordering::SeqCst);
}

fn mode_signals() {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_usr1 as *const () as usize;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: installs an async-signal-safe handler (one atomic add) for SIGUSR1.
    let rc = unsafe { libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction");
    say("ready");
    for_each_line(|line| {
        if line == "count" {
            say(&format!("usr1 {}", USR1.load(Ordering::SeqCst)));
        }
    });
}

fn mode_sigstop() {
    say("stopping");
    // SAFETY: raise has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGSTOP) };
    say("continued");
}

fn mode_tracer(pid: i32) {
    // SAFETY: PTRACE_SEIZE takes no pointers (addr and data are zero).
    let ret = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) };
    if ret == 0 {
        say("traced");
    } else {
        say(&format!("error {}", errno()));
    }
    for_each_line(|_| {});
}

fn mode_zombie_leader() {
    std::thread::spawn(|| {
        say("ready");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        say(&format!("got {}", line.trim()));
        std::process::exit(0);
    });
    // The raw exit system call ends only the calling thread, without unwinding (glibc's
    // pthread_exit would unwind through Rust's main and abort).
    // SAFETY: the thread above references nothing on this thread's stack.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "read" => mode_read(),
        "sleep" => mode_sleep(arg(1).parse().expect("sleep MS")),
        "churn" => mode_churn(arg(1).parse().expect("churn N")),
        "ymm" => mode_ymm(),
        "memory" => mode_memory(),
        "fds" => mode_fds(),
        "signals" => mode_signals(),
        "sigstop" => mode_sigstop(),
        "tracer" => mode_tracer(arg(1).parse().expect("tracer PID")),
        "zombie-leader" => mode_zombie_leader(),
        other => {
            eprintln!("tracee-testee: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
