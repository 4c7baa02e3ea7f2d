//! Capture, inference and output on separate threads, joined by bounded
//! queues that drop the oldest frame when the next stage falls behind, so
//! latency stays bounded whatever the camera's rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::engine::EngineError;
use crate::segmenter::{Segmenter, StageTimes};
use crate::source::{FrameSource, OwnedFrame, SourceError, SourceStats};

/// A queue of at most `capacity` items; pushing into a full queue drops the
/// oldest item and returns it.
#[derive(Debug)]
pub struct DropOldest<T> {
    state: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
    room: Condvar,
    capacity: usize,
}

impl<T> DropOldest<T> {
    /// An open queue holding at most `capacity` (at least 1) items.
    pub fn new(capacity: usize) -> DropOldest<T> {
        DropOldest {
            state: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds `item`; returns the item dropped to make room, if any.
    pub fn push(&self, item: T) -> Option<T> {
        let mut state = self.state.lock().expect("queue lock");
        let dropped = (state.0.len() >= self.capacity)
            .then(|| state.0.pop_front())
            .flatten();
        state.0.push_back(item);
        self.ready.notify_one();
        dropped
    }

    /// Adds `item`, waiting while the queue is full (for sources that are not
    /// live, such as files, where every frame should be processed). Returns
    /// `false` if the queue was closed meanwhile.
    pub fn push_blocking(&self, item: T) -> bool {
        let mut state = self.state.lock().expect("queue lock");
        while state.0.len() >= self.capacity && !state.1 {
            state = self.room.wait(state).expect("queue lock");
        }
        if state.1 {
            return false;
        }
        state.0.push_back(item);
        self.ready.notify_one();
        true
    }

    /// The oldest item, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if let Some(item) = state.0.pop_front() {
                self.room.notify_one();
                return Some(item);
            }
            if state.1 {
                return None;
            }
            state = self.ready.wait(state).expect("queue lock");
        }
    }

    /// Whether [`DropOldest::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("queue lock").1
    }

    /// No more items will come; `pop` returns what is left, then `None`.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").1 = true;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

/// Spent buffers handed back by later stages, so that steady-state frames
/// reuse allocations instead of making new ones.
#[derive(Debug)]
struct Pool<T> {
    items: Mutex<Vec<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool {
            items: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Pool<T> {
    /// Most buffers kept: enough for every queue slot and stage in flight.
    const KEEP: usize = 16;

    fn take(&self) -> Option<T> {
        self.items.lock().expect("pool lock").pop()
    }

    fn give(&self, item: T) {
        let mut items = self.items.lock().expect("pool lock");
        if items.len() < Self::KEEP {
            items.push(item);
        }
    }
}

/// A request to end a run early, shared between the run and whoever decides
/// it (a SIGTERM handler): capture stops, the frames already captured are
/// segmented and written, and the sinks are finished.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A stop that has not been requested.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks the run to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Frame counters, shared by the stages.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames read from the source.
    pub captured: AtomicU64,
    /// Frames segmented and handed to the outputs.
    pub processed: AtomicU64,
    /// Frames lost because inference or output fell behind (dropped from a
    /// queue before reaching the outputs, segmented or not). Once a run has
    /// ended, `captured = processed + dropped`.
    pub dropped: AtomicU64,
}

/// One segmented frame, as the output stage receives it.
#[derive(Clone, Debug)]
pub struct Segmented {
    /// Frame number in capture order (gaps where frames were dropped).
    pub seq: u64,
    /// The frame as captured.
    pub frame: OwnedFrame,
    /// Class mask at the model's input size.
    pub mask: Vec<u8>,
    /// When capture of the frame started.
    pub started: Instant,
    /// How long reading the frame took.
    pub capture: Duration,
    /// Preprocess, inference and postprocess times.
    pub times: StageTimes,
}

/// What ended a pipeline run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The output stage failed; its error is the source.
    #[error("output")]
    Output(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Totals of a finished run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTotals {
    /// Frames read from the source.
    pub captured: u64,
    /// Frames segmented and handed to the outputs.
    pub processed: u64,
    /// Frames lost on the way (see [`Counters::dropped`]); `captured =
    /// processed + dropped`.
    pub dropped: u64,
    /// The source's own counters (corrupt, truncated).
    pub source: SourceStats,
}

/// Closes every queue of `queues`.
fn close_all<T>(queues: &[Arc<DropOldest<T>>]) {
    queues.iter().for_each(|q| q.close());
}

/// Runs `source` through `segmenters` into `output` until the source ends or
/// `limit` frames were captured. Capture runs on its own thread, each
/// segmenter (a worker, see [`Segmenter::fork`]) on its own, and `output` on
/// the calling thread. Frame `k` goes to worker `k % workers`, so several
/// frames are in flight at once; the output stage merges the workers'
/// results back into capture order. Queues hold `depth` frames per worker;
/// for a live source (a camera) a stage that falls behind loses the oldest
/// frame, for a recorded one (files) the earlier stage waits instead.
///
/// When `stop` is requested, capture ends after the frame it is reading and
/// the frames already captured go through; a source that does not deliver
/// its frame within `drain` (a read that blocks) is abandoned, so the run
/// always ends within `drain` plus the time to segment what is queued.
pub fn run<E>(
    mut source: Box<dyn FrameSource>,
    segmenters: Vec<Segmenter>,
    limit: u64,
    depth: usize,
    stop: &Stop,
    drain: Duration,
    mut output: impl FnMut(&Segmented) -> Result<(), E>,
) -> Result<RunTotals, PipelineError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    assert!(!segmenters.is_empty(), "at least one segmenter");
    let workers = segmenters.len();
    let counters = Arc::new(Counters::default());
    let frame_pool: Arc<Pool<OwnedFrame>> = Arc::default();
    let mask_pool: Arc<Pool<Vec<u8>>> = Arc::default();
    let live = source.is_live();
    type Captured = (u64, OwnedFrame, Instant, Duration);
    let frames: Vec<Arc<DropOldest<Captured>>> = (0..workers)
        .map(|_| Arc::new(DropOldest::new(depth)))
        .collect();
    let results: Vec<Arc<DropOldest<Segmented>>> = (0..workers)
        .map(|_| Arc::new(DropOldest::new(depth)))
        .collect();
    // Set by the capture thread when it ends, and by this one when the run is
    // over (so the watchdog below ends too).
    let capture_done = Arc::new(AtomicBool::new(false));
    let run_done = Arc::new(AtomicBool::new(false));
    let capture = {
        let (frames, counters, frame_pool) = (frames.clone(), counters.clone(), frame_pool.clone());
        let (stop, done) = (stop.clone(), capture_done.clone());
        std::thread::spawn(move || -> Result<SourceStats, SourceError> {
            let mut seq = 0;
            let result = loop {
                if seq >= limit || stop.requested() {
                    break Ok(());
                }
                let started = Instant::now();
                match source.next_frame() {
                    Ok(Some(frame)) => {
                        let owned = match frame_pool.take() {
                            Some(mut spare) => {
                                spare.copy_from(frame);
                                spare
                            }
                            None => frame.clone(),
                        };
                        let item = (seq, owned, started, started.elapsed());
                        counters.captured.fetch_add(1, Ordering::Relaxed);
                        let queue = &frames[(seq % frames.len() as u64) as usize];
                        if queue.is_closed() {
                            // A worker failed and stopped the run.
                            break Ok(());
                        }
                        if live {
                            if let Some((_, spent, ..)) = queue.push(item) {
                                frame_pool.give(spent);
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if !queue.push_blocking(item) {
                            break Ok(());
                        }
                        seq += 1;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            frames.iter().for_each(|q| q.close());
            let result = result.map(|()| source.stats());
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    // After a stop, give capture `drain` to return from its read, then close
    // the frame queues so the later stages finish without it.
    let watchdog = {
        let (frames, stop) = (frames.clone(), stop.clone());
        let (capture_done, run_done) = (capture_done.clone(), run_done.clone());
        std::thread::spawn(move || {
            let tick = Duration::from_millis(10);
            while !stop.requested() {
                if capture_done.load(Ordering::SeqCst) || run_done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(tick);
            }
            let deadline = Instant::now() + drain;
            while !capture_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(tick);
            }
            close_all(&frames);
        })
    };
    let frames_all = frames.clone();
    let inference: Vec<_> = segmenters
        .into_iter()
        .zip(frames.iter().cloned().zip(results.iter().cloned()))
        .map(|(mut segmenter, (frames, results))| {
            let (counters, frame_pool, mask_pool) =
                (counters.clone(), frame_pool.clone(), mask_pool.clone());
            let all_frames = frames_all.clone();
            std::thread::spawn(move || -> Result<(), EngineError> {
                let result = (|| {
                    while let Some((seq, frame, started, capture)) = frames.pop() {
                        segmenter.segment(&frame.frame())?;
                        let mut mask = mask_pool.take().unwrap_or_default();
                        mask.clear();
                        mask.extend_from_slice(segmenter.mask());
                        let item = Segmented {
                            seq,
                            mask,
                            times: segmenter.times(),
                            frame,
                            started,
                            capture,
                        };
                        if live {
                            if let Some(spent) = results.push(item) {
                                frame_pool.give(spent.frame);
                                mask_pool.give(spent.mask);
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if !results.push_blocking(item) {
                            break;
                        }
                    }
                    Ok(())
                })();
                results.close();
                // Unblock the capture thread's pushes if inference stopped
                // early, and stop the run if it failed.
                frames.close();
                if result.is_err() {
                    close_all(&all_frames);
                }
                result
            })
        })
        .collect();
    // Each worker's results come in capture order: merge them by taking the
    // lowest sequence number among the workers' next results.
    let mut heads: Vec<Option<Segmented>> = (0..workers).map(|_| None).collect();
    let mut open = vec![true; workers];
    let mut output_error = None;
    loop {
        for ((head, open), queue) in heads.iter_mut().zip(&mut open).zip(&results) {
            if head.is_none() && *open {
                *head = queue.pop();
                *open = head.is_some();
            }
        }
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (h.seq, i)))
            .min();
        let Some((_, i)) = next else { break };
        let item = heads[i].take().expect("the head just found");
        if let Err(e) = output(&item) {
            output_error = Some(Box::new(e));
            break;
        }
        counters.processed.fetch_add(1, Ordering::Relaxed);
        frame_pool.give(item.frame);
        mask_pool.give(item.mask);
    }
    if output_error.is_some() {
        // Stop the producers: closing lets them finish their current frame.
        close_all(&frames);
        close_all(&results);
    }
    let mut inference_result = Ok(());
    for worker in inference {
        let result = worker.join().expect("inference thread");
        if inference_result.is_ok() {
            inference_result = result;
        }
    }
    run_done.store(true, Ordering::SeqCst);
    watchdog.join().expect("watchdog thread");
    // A capture thread still blocked in a read after a stop is left behind
    // (the process is about to end); its source counters are then unknown.
    let capture_result = if capture_done.load(Ordering::SeqCst) || !stop.requested() {
        capture.join().expect("capture thread")
    } else {
        Ok(SourceStats::default())
    };
    if let Some(e) = output_error {
        return Err(PipelineError::Output(e));
    }
    inference_result?;
    let source = capture_result?;
    Ok(RunTotals {
        captured: counters.captured.load(Ordering::Relaxed),
        processed: counters.processed.load(Ordering::Relaxed),
        dropped: counters.dropped.load(Ordering::Relaxed),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queues_drop_the_oldest() {
        let q = DropOldest::new(2);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), Some(1));
        q.close();
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(2), Some(3), None));
    }

    #[test]
    fn blocking_pushes_wait_for_room() {
        let q = Arc::new(DropOldest::new(1));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    assert!(q.push_blocking(i));
                }
                q.close();
            })
        };
        let seen: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        producer.join().unwrap();
        assert_eq!(seen, (0..50).collect::<Vec<_>>(), "nothing dropped");
    }

    #[test]
    fn a_consumer_waits_for_a_producer() {
        let q = Arc::new(DropOldest::new(4));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    q.push(i);
                    std::thread::sleep(Duration::from_micros(50));
                }
                q.close();
            })
        };
        let mut seen = Vec::new();
        while let Some(i) = q.pop() {
            seen.push(i);
        }
        producer.join().unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(seen.last(), Some(&99), "the newest always arrives");
    }
}
