//! What edgeseg's own operators share: matrix products through the `gemm`
//! crate and work split over the threads of tract's executor.

use tract_linalg::multithread::{Executor, current_tract_executor};

/// Threads `executor` runs on.
pub(super) fn threads(executor: &Executor) -> usize {
    match executor {
        Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    }
}

/// Runs `f` on this thread with every thread of `executor`'s pool kept
/// awake until it returns, taking the work edgeseg's operators and tract's
/// products hand out as soon as it comes.
///
/// A pool thread that finds no work soon goes to sleep, and waking it costs
/// more than a small operator's half: on this project's VM a split of 2 x 100
/// µs took 186 µs after 200 µs of idleness against 116 µs straight after
/// other work. A frame alternates such splits with tract's own one-thread
/// nodes, so without this every split paid the wake-up. The threads spin
/// only while `f` runs (a frame), as onnxruntime's pool does between its
/// operators, and sleep between frames.
pub(super) fn with_pool_awake<R>(executor: &Executor, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    thread_local! {
        /// Whether this pool thread already runs a keeper (one that picked
        /// up a second keeper while looking for work must not nest it).
        static KEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let Executor::MultiThread(pool) = executor else {
        return f();
    };
    let done = AtomicBool::new(false);
    pool.in_place_scope(|s| {
        for _ in 0..pool.current_num_threads() {
            s.spawn(|_| {
                if KEEPING.replace(true) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
                KEEPING.set(false);
            });
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

/// Runs `work` on each of `groups`, each on a thread of `executor`'s pool
/// (on this thread when there is one group or no pool).
pub(super) fn split<T: Send>(executor: &Executor, mut groups: Vec<T>, work: impl Fn(T) + Sync) {
    match executor {
        Executor::MultiThread(pool) if groups.len() > 1 => {
            // The calling thread takes the last group itself: it is awake
            // and its cache holds the operator's input, so only the others
            // wait for a pool thread to wake.
            let mine = groups.pop();
            pool.in_place_scope(|s| {
                let work = &work;
                for group in groups {
                    s.spawn(move |_| work(group));
                }
                mine.into_iter().for_each(work);
            })
        }
        _ => groups.into_iter().for_each(work),
    }
}

/// Runs `work` on each of `items`, cut into one run of consecutive items per
/// thread of `executor`.
pub(super) fn split_work<T: Send>(executor: &Executor, items: Vec<T>, work: impl Fn(T) + Sync) {
    let per = items.len().div_ceil(threads(executor)).max(1);
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        match groups.last_mut() {
            Some(g) if g.len() < per => g.push(item),
            _ => groups.push(vec![item]),
        }
    }
    split(executor, groups, |group| group.into_iter().for_each(&work));
}

/// Splits `out`, planes of `rows x width` values, into one block of
/// consecutive rows per thread of tract's current executor and runs
/// `work(first, planes)` on each over the executor: `planes` holds rows
/// `first..` of every plane, the same count in each.
pub(super) fn split_rows<T: Send>(
    out: &mut [T],
    [rows, width]: [usize; 2],
    work: impl Fn(usize, &mut [&mut [T]]) + Sync,
) {
    let executor = current_tract_executor();
    let step = rows.div_ceil(threads(&executor));
    let mut blocks: Vec<Vec<&mut [T]>> = (0..rows.div_ceil(step)).map(|_| Vec::new()).collect();
    for plane in out.chunks_exact_mut(rows * width) {
        for (b, chunk) in plane.chunks_mut(step * width).enumerate() {
            blocks[b].push(chunk);
        }
    }
    let items: Vec<_> = blocks.into_iter().enumerate().collect();
    split_work(&executor, items, |(b, mut planes)| {
        work(b * step, &mut planes)
    });
}

/// `c (m x n) = a (m x k) @ b (k x n)`, all row-major and contiguous.
pub(super) fn matmul([m, n, k]: [usize; 3], c: &mut [f32], a: &[f32], b: &[f32]) {
    matmul_strided([m, n, k], c, n, a, k, b, n, false);
}

/// `c (m x n) = a (m x k) @ b (k x n)`, or `c += a @ b` when `accumulate`,
/// row-major with row strides `ldc`, `lda` and `ldb` (at least the row
/// lengths).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_strided(
    [m, n, k]: [usize; 3],
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    accumulate: bool,
) {
    let covers = |len: usize, rows: usize, ld: usize, cols: usize| {
        rows == 0 || cols == 0 || len >= (rows - 1) * ld + cols
    };
    assert!(ldc >= n && lda >= k && ldb >= n);
    assert!(covers(c.len(), m, ldc, n) && covers(a.len(), m, lda, k) && covers(b.len(), k, ldb, n));
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertions above show each slice covers its matrix at the
    // row strides given, and `c` is borrowed mutably, so it aliases neither
    // `a` nor `b`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The first `len` values of the thread-local scratch `buf`, grown when it
/// is shorter (its contents are whatever the last call left).
pub(super) fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}
