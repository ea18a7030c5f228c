//! Memory of a seized child: batched reads with precise failures, writes to read-only
//! pages.

use tracee::{FailedRange, IOV_MAX, MemoryError, RemoteRange, SeizeOptions, SeizedProcess};

use crate::common::Testee;

const PAGE: u64 = 4096;

#[test]
fn reads_report_failed_pages_and_writes_reach_read_only_pages() {
    let mut child = Testee::spawn(&["memory"]);
    let line = child.line();
    let base =
        u64::from_str_radix(line.strip_prefix("mem ").expect("mem ADDR"), 16).expect("hex address");
    let pid = child.pid();
    let process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let memory = process.memory();

    // Four pages: 0x11, read-only 0x22, unmapped, 0x44; plus a range across the hole.
    let ranges = [
        RemoteRange {
            addr: base,
            len: PAGE,
        },
        RemoteRange {
            addr: base + PAGE,
            len: PAGE,
        },
        RemoteRange {
            addr: base + 2 * PAGE,
            len: PAGE,
        },
        RemoteRange {
            addr: base + 3 * PAGE,
            len: PAGE,
        },
        RemoteRange {
            addr: base + PAGE + 100,
            len: 2 * PAGE,
        },
    ];
    let mut buf = vec![0xffu8; 6 * PAGE as usize];
    let report = memory.read_ranges(&ranges, &mut buf).expect("read");
    let p = PAGE as usize;
    assert!(buf[..p].iter().all(|&b| b == 0x11));
    assert!(buf[p..2 * p].iter().all(|&b| b == 0x22));
    assert!(
        buf[2 * p..3 * p].iter().all(|&b| b == 0),
        "failed bytes are zeroed"
    );
    assert!(buf[3 * p..4 * p].iter().all(|&b| b == 0x44));
    assert!(buf[4 * p..5 * p - 100].iter().all(|&b| b == 0x22));
    assert!(buf[5 * p - 100..6 * p - 100].iter().all(|&b| b == 0));
    assert!(buf[6 * p - 100..].iter().all(|&b| b == 0x44));
    // The hole is reported once per range that covers it, and reading resumes after it.
    let hole = FailedRange {
        addr: base + 2 * PAGE,
        len: PAGE,
        errno: libc::EFAULT,
    };
    assert_eq!(report.failed, vec![hole, hole]);
    assert_eq!(report.bytes_read, 4 * PAGE);

    // More ranges than one system call takes: small pieces alternating between pages.
    let pieces: Vec<RemoteRange> = (0..3 * IOV_MAX as u64 + 7)
        .map(|i| RemoteRange {
            addr: if i % 2 == 0 { base } else { base + 3 * PAGE } + (i * 16) % PAGE,
            len: 16,
        })
        .collect();
    let mut buf = vec![0u8; pieces.len() * 16];
    let report = memory.read_ranges(&pieces, &mut buf).expect("read pieces");
    assert!(report.is_complete());
    for (i, chunk) in buf.chunks(16).enumerate() {
        let want = if i % 2 == 0 { 0x11 } else { 0x44 };
        assert!(chunk.iter().all(|&b| b == want), "piece {i}");
    }

    // Mismatched buffer.
    assert!(matches!(
        memory.read_ranges(&ranges[..1], &mut [0u8; 10]),
        Err(MemoryError::LengthMismatch { .. })
    ));
    // A single read across the hole fails, naming the first bad address.
    let mut two = vec![0u8; 2 * p];
    match memory.read(base + PAGE, &mut two) {
        Err(MemoryError::Read { addr, .. }) => assert_eq!(addr, base + 2 * PAGE),
        other => panic!("expected a read error, got {other:?}"),
    }

    // Writing the read-only page works through /proc/PID/mem.
    let stamp: Vec<u8> = (0..16).map(|i| 0xc0 + i).collect();
    memory
        .write(base + PAGE, &stamp)
        .expect("write read-only page");
    let mut back = [0u8; 16];
    memory.read(base + PAGE, &mut back).expect("read back");
    assert_eq!(back.as_slice(), stamp.as_slice());
    // The unmapped page cannot be written.
    match memory.write(base + 2 * PAGE - 8, &[0u8; 16]) {
        Err(MemoryError::Write { addr, .. }) => assert_eq!(addr, base + 2 * PAGE),
        other => panic!("expected a write error, got {other:?}"),
    }

    process.detach().expect("detach");
    child.send("page1");
    let hex: String = stamp.iter().map(|b| format!("{b:02x}")).collect();
    child.expect(&format!("page1 {hex}"));
}

#[test]
fn forced_reads_reach_pages_without_read_permission() {
    let mut child = Testee::spawn(&["memory"]);
    let line = child.line();
    let base =
        u64::from_str_radix(line.strip_prefix("mem ").expect("mem ADDR"), 16).expect("hex address");
    let pid = child.pid();
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    // Make page 0 (0x11 bytes) PROT_NONE inside the child.
    let ret = process
        .remote_syscall(
            pid,
            libc::SYS_mprotect as u64,
            [base, PAGE, libc::PROT_NONE as u64, 0, 0, 0],
        )
        .expect("remote mprotect");
    assert_eq!(ret, 0);
    let memory = process.memory();
    let mut page = vec![0u8; PAGE as usize];
    assert!(
        matches!(memory.read(base, &mut page), Err(MemoryError::Read { .. })),
        "process_vm_readv refuses PROT_NONE"
    );
    memory.read_forced(base, &mut page).expect("forced read");
    assert!(page.iter().all(|&b| b == 0x11));
    match memory.read_forced(base + 2 * PAGE, &mut page) {
        Err(MemoryError::Read { addr, .. }) => assert_eq!(addr, base + 2 * PAGE),
        other => panic!("expected a read error on the unmapped page, got {other:?}"),
    }
    process
        .remote_syscall(
            pid,
            libc::SYS_mprotect as u64,
            [
                base,
                PAGE,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                0,
                0,
                0,
            ],
        )
        .expect("remote mprotect back");
    process.detach().expect("detach");
    child.send("page1");
    assert!(child.line().starts_with("page1 "));
}
