//! Training: the loop and the step benchmark. What it runs is
//! [`crate::config`]; the run folder it writes, and how it stays consistent
//! through a crash, is [`crate::run`].

use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use firmware::Size;
use firmware::metrics::ConfusionMatrix;

use crate::config::{ClassWeights, OptimizerKind, TrainConfig};
use crate::data::{BatchPlan, Source, batches};
use crate::device::{DeviceSpec, Devices};
use crate::error::{Error, Result};
use crate::inference::{EvalPlan, Tta, evaluate};
use crate::loss::{LossConfig, median_frequency_weights};
use crate::model::{Model, ModelConfig};
use crate::optim::FusedAdam;
use crate::parallel::{Objective, Replicas, StepBatch, check_batch};
use crate::run::{EpochRecord, RunDir, RunState, Start, model_bytes};

/// The optimiser `config` asks for.
/// The optimiser of `config` on `device`: the fused Adam on the CPU, Burn's
/// own (the same state, so checkpoints move between devices) elsewhere.
fn optimizer(config: &TrainConfig, device: &DeviceSpec) -> ModuleOptimizer {
    let wd = config.weight_decay as f32;
    let decay = (wd > 0.0).then(|| WeightDecayConfig::new(wd));
    match config.optimizer {
        OptimizerKind::Adam if device.is_cpu() => FusedAdam::adam(wd).init(),
        OptimizerKind::Adamw if device.is_cpu() => FusedAdam::adamw(wd).init(),
        OptimizerKind::Adam => AdamConfig::new().with_weight_decay(decay).init(),
        OptimizerKind::Adamw => AdamWConfig::new().with_weight_decay(wd).init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
            }))
            .init(),
    }
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Final state.
    pub state: RunState,
    /// Validation confusion matrix of the last epoch.
    pub last_matrix: ConfusionMatrix,
}

/// Counts class pixels over the training labels for median-frequency weights.
fn class_statistics(source: &Source, config: &TrainConfig) -> Result<Vec<f32>> {
    let n = config.model.num_classes();
    let plan = BatchPlan {
        batch: 8,
        size: config.size,
        augment: None,
        normalize: config.normalize.clone(),
        shuffle: None,
        void: config.labels.void,
        workers: config.workers,
        native_masks: false,
        crop: None,
    };
    let mut class_pixels = vec![0u64; n];
    let mut present_pixels = vec![0u64; n];
    let plane = config.size.area();
    for batch in batches(source, &plan) {
        let batch = batch?;
        for mask in batch.masks.chunks(plane) {
            let mut counts = vec![0u64; n];
            for &v in mask {
                if (v as usize) < n {
                    counts[v as usize] += 1;
                }
            }
            for c in 0..n {
                class_pixels[c] += counts[c];
                if counts[c] > 0 {
                    present_pixels[c] += plane as u64;
                }
            }
        }
    }
    Ok(median_frequency_weights(&class_pixels, &present_pixels))
}

/// A freshly initialised model for `config` (with its ImageNet encoder
/// weights when the configuration names them).
fn initial_model(
    config: &TrainConfig,
    device: &Device,
    log: &mut impl FnMut(&str),
) -> Result<Model> {
    device.seed(config.seed);
    let mut model = config.model.init(device);
    if let Some(path) = &config.encoder_weights {
        let Model::Linknet(net) = &mut model else {
            return Err(Error::Invalid(
                "--encoder-weights: only LinkNet has a ResNet encoder".into(),
            ));
        };
        let n = crate::model::pretrained::load_resnet_encoder(net, path)?;
        log(&format!(
            "encoder: {n} tensors of ImageNet weights from {}",
            path.display()
        ));
    }
    Ok(model)
}

/// Trains `config` into the run folder `run` on the CPU (see [`Start`] for
/// how an existing folder is treated; resuming takes the configuration from
/// the folder). Every input is validated before anything is written. `log`
/// receives one line per epoch.
pub fn train(
    config: &TrainConfig,
    run: &RunDir,
    start: Start,
    quiet: bool,
    log: impl FnMut(&str),
) -> Result<TrainSummary> {
    train_on(&Devices::default(), config, run, start, quiet, log)
}

/// [`train`] on the devices `on`: any device, including one other than the
/// run was started on when resuming; with several, each step's batch is split
/// across them ([`crate::parallel`]), and the first holds the model, the
/// optimiser and evaluation.
pub fn train_on(
    devices: &Devices,
    config: &TrainConfig,
    run: &RunDir,
    start: Start,
    quiet: bool,
    mut log: impl FnMut(&str),
) -> Result<TrainSummary> {
    let on = &devices.all()[0];
    let eval_device = on.device()?;
    let device = eval_device.clone().autodiff();
    let (config, mut state, mut model, mut optim) = if start == Start::Resume {
        let config = run.config()?;
        let state = run.state()?;
        run.tidy(&state)?;
        if state.epochs_done == 0 {
            log(&format!(
                "resuming {}: no epoch was finished, starting from the beginning",
                run.path.display()
            ));
            let model = initial_model(&config, &device, &mut log)?;
            let optim = optimizer(&config, on);
            (config, state, model, optim)
        } else {
            let model = run.load_model("last.bpk", &device)?;
            let optim_path = run.optimizer_path(&state);
            let optim = optimizer(&config, on)
                .load(&optim_path)
                .map_err(|e| Error::BadFile {
                    path: optim_path.clone(),
                    what: format!("not a loadable optimizer state: {e:?}"),
                })?;
            log(&format!(
                "resuming {} after epoch {}",
                run.path.display(),
                state.epochs_done
            ));
            (config, state, model, optim)
        }
    } else {
        if config.batch == 0 || config.epochs == Some(0) {
            return Err(Error::Invalid(
                "--batch and --epochs must be at least 1".into(),
            ));
        }
        if config.epochs.is_none() && config.time_limit.is_none() {
            return Err(Error::Invalid(
                "give --epochs or --time-limit: training needs an end".into(),
            ));
        }
        if let Some(crop) = config.crop
            && (crop.width > config.size.width
                || crop.height > config.size.height
                || crop.area() == 0)
        {
            return Err(Error::Invalid(format!(
                "--crop {crop} does not fit inside --size {}: the crop must be \
                 non-empty and at most as wide and as tall as the training size",
                config.size
            )));
        }
        run.check_new(start)?;
        let model = initial_model(config, &device, &mut log)?;
        (
            config.clone(),
            RunState::default(),
            model,
            optimizer(config, on),
        )
    };
    let (train_source, val_source) = config.sources()?;
    if train_source.is_empty() || val_source.is_empty() {
        return Err(Error::Invalid(
            "the training and validation splits must each hold at least one image".into(),
        ));
    }
    if start != Start::Resume {
        train_source.check(config.workers)?;
        val_source.check(config.workers)?;
    }
    let n_classes = config.model.num_classes();
    if state.class_weights.is_empty() {
        state.class_weights = match &config.class_weights {
            ClassWeights::None => vec![1.0; n_classes],
            ClassWeights::Median => class_statistics(&train_source, &config)?,
            ClassWeights::SqrtMedian => class_statistics(&train_source, &config)?
                .into_iter()
                .map(f32::sqrt)
                .collect(),
            ClassWeights::Given(w) if w.len() == n_classes => w.clone(),
            ClassWeights::Given(w) => {
                return Err(Error::Invalid(format!(
                    "{} class weights given for {n_classes} classes",
                    w.len()
                )));
            }
        };
    }
    check_batch(config.batch, devices.all().len())?;
    // Everything is validated: only now is the folder written.
    if start != Start::Resume {
        if start == Start::Overwrite {
            run.clear()?;
        }
        run.begin(&config)?;
    }
    let weighted = !state.class_weights.iter().all(|&w| w == 1.0);
    let replicas = Replicas::new(devices.all(), weighted.then_some(&state.class_weights[..]))?;
    let objective = Objective {
        loss: &config.loss,
        void: config.labels.void,
    };
    let batches_per_epoch = train_source.len().div_ceil(config.batch);
    let total_iters = config.epochs.map(|e| e as f64 * batches_per_epoch as f64);
    let eval_plan = EvalPlan {
        size: config.size,
        normalize: config.normalize.clone(),
        labels: config.labels.clone(),
        batch: config.batch,
        workers: config.workers,
        tta: Tta::None,
    };
    let mut last_matrix = ConfusionMatrix::new(n_classes, Some(config.labels.void));
    // Time spent by earlier sessions of this run counts against the budget.
    let spent_before: f64 = state.history.iter().map(|r| r.seconds).sum();
    let run_started = Instant::now();
    let elapsed = || spent_before + run_started.elapsed().as_secs_f64();
    // How far the run is after `steps` steps, in [0, 1]: by steps, or by the
    // time budget when that is further along.
    let progress_after = |steps: usize| {
        let by_steps = total_iters.map_or(0.0, |total| steps as f64 / total);
        match config.time_limit {
            Some(limit) => by_steps.max(elapsed() / limit),
            None => by_steps,
        }
    };
    let mut out_of_time = false;
    // Without an epoch count, the time limit ends the run.
    for epoch in state.epochs_done + 1..=config.epochs.unwrap_or(usize::MAX) {
        let of = match config.epochs {
            Some(epochs) => format!("{epoch}/{epochs}"),
            None => format!("{epoch}"),
        };
        // The log lines keep their columns aligned.
        let of_log = match config.epochs {
            Some(epochs) => format!("{epoch:>3}/{epochs}"),
            None => format!("{epoch:>3}"),
        };
        if config.time_limit.is_some_and(|limit| elapsed() >= limit) {
            log("the time budget is used up: nothing to resume");
            break;
        }
        let started = Instant::now();
        // Progressive resizing: half the size on each side early in the run.
        let small = progress_after((epoch - 1) * batches_per_epoch) < config.progressive;
        let scale = |s: Size| {
            if small {
                Size::new(s.width.div_ceil(2), s.height.div_ceil(2))
            } else {
                s
            }
        };
        let plan = BatchPlan {
            batch: config.batch,
            size: scale(config.size),
            augment: config.augment.clone(),
            normalize: config.normalize.clone(),
            shuffle: Some(firmware::rng::hash3(config.seed, epoch as u64, 7)),
            void: config.labels.void,
            workers: config.workers,
            native_masks: false,
            crop: config.crop.map(scale),
        };
        let progress = crate::progress::bar(
            train_source.len() as u64,
            quiet,
            format!("epoch {of} on {devices}"),
            "images",
        );
        let (mut loss_sum, mut seen, mut lr) = (0.0f64, 0usize, config.lr);
        for (i, batch) in batches(&train_source, &plan).enumerate() {
            let batch = batch?;
            let t = progress_after((epoch - 1) * batches_per_epoch + i);
            lr = config.schedule.rate(config.lr, t, config.warmup);
            let step = StepBatch {
                hw: (batch.size.height as usize, batch.size.width as usize),
                images: batch.images,
                masks: batch.masks,
                len: batch.len,
            };
            let (value, grads) = replicas.loss_and_grads(&model, step, &objective);
            if !value.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged at epoch {epoch}, batch {i}: loss is {value}; lower --lr"
                )));
            }
            model = optim.step(lr, model, grads);
            loss_sum += value * batch.len as f64;
            seen += batch.len;
            progress.inc(batch.len as u64);
            progress.set_message(format!(
                "epoch {of} on {devices} loss {:.4} lr {lr:.2e}",
                loss_sum / seen as f64
            ));
            if config.time_limit.is_some_and(|limit| elapsed() >= limit) {
                out_of_time = true;
                break;
            }
        }
        progress.finish_and_clear();
        // Validate the first epoch, every `val_every`-th and the last one.
        let last_epoch = out_of_time
            || config.epochs == Some(epoch)
            || config.time_limit.is_some_and(|limit| elapsed() >= limit);
        let validate =
            state.history.is_empty() || last_epoch || epoch % config.val_every.max(1) == 0;
        let matrix = if validate {
            Some(evaluate(
                &model.valid(),
                &val_source,
                &eval_plan,
                &eval_device,
                |_| {},
            )?)
        } else {
            None
        };
        let train_size = plan.crop.unwrap_or(plan.size);
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            val_miou: matrix.as_ref().map(ConfusionMatrix::mean_iou),
            val_pixel_accuracy: matrix.as_ref().map(ConfusionMatrix::pixel_accuracy),
            lr,
            seconds: started.elapsed().as_secs_f64(),
            train_size: Some(train_size),
        };
        let trained_at = if small {
            format!("  (trained at {train_size})")
        } else {
            String::new()
        };
        let scores = match (record.val_miou, record.val_pixel_accuracy) {
            (Some(miou), Some(accuracy)) => {
                format!("val mIoU {miou:.4}  pixel acc {accuracy:.4}")
            }
            _ => format!("{:<31}", "(not validated)"),
        };
        log(&format!(
            "epoch {of_log}  train loss {:.4}  {scores}  {:.1}s{}",
            record.train_loss, record.seconds, trained_at
        ));
        let best = record
            .val_miou
            .is_some_and(|miou| miou > state.best_miou || state.history.is_empty());
        if let Some(miou) = record.val_miou.filter(|_| best) {
            state.best_miou = miou;
            state.best_epoch = epoch;
        }
        let weights = model_bytes(&model, &run.file("last.bpk"))?;
        let optim_bytes = optim.into_bytes().map_err(|e| Error::BadFile {
            path: run.file("optimizer.bpk"),
            what: format!("cannot serialise the optimizer: {e:?}"),
        })?;
        state.history.push(record);
        state.epochs_done = epoch;
        if let Some(matrix) = matrix {
            last_matrix = matrix;
        }
        if config
            .patience
            .is_some_and(|p| epoch - state.best_epoch >= p)
        {
            state.stopped_early = true;
        }
        // Checkpoints, then the state naming them: see `crate::run`.
        run.commit(&mut state, &weights, &optim_bytes, best)?;
        run.write_metrics_csv(&state.history)?;
        crate::plot::curves(&run.file("curves.png"), &state.history)?;
        if state.stopped_early {
            log(&format!(
                "no better validation mIoU for {} epochs: stopping early",
                epoch - state.best_epoch
            ));
            break;
        }
        if out_of_time {
            log(&format!(
                "time budget of {:.0} s used up after {:.0} s: stopping",
                config.time_limit.unwrap_or_default(),
                elapsed()
            ));
            break;
        }
    }
    Ok(TrainSummary { state, last_matrix })
}

/// Timed training steps of one network: what `edgeseg bench-step` prints.
#[derive(Clone, Debug)]
pub struct StepTimes {
    /// Where the steps ran (several: data parallel).
    pub device: Devices,
    /// The network's name.
    pub model: String,
    /// Input size.
    pub size: Size,
    /// Images per step.
    pub batch: usize,
    /// Parameter count, to check that both sides of a comparison build the
    /// same network.
    pub params: usize,
    /// Seconds of each timed step.
    pub seconds: Vec<f64>,
}

impl StepTimes {
    /// Median step time in seconds (NaN without steps).
    pub fn median(&self) -> f64 {
        let mut sorted = self.seconds.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The JSON line `bench/train-step.sh` reads beside PyTorch's.
    pub fn to_json(&self) -> serde_json::Value {
        let backend = if self.device == Devices::default() {
            "burn-flex".to_string()
        } else {
            self.device.to_string()
        };
        let median = self.median();
        serde_json::json!({
            "framework": format!("burn 0.22 ({backend})"),
            "device": self.device.to_string(),
            "devices": self.device.all().len(),
            "model": self.model,
            "size": self.size.to_string(),
            "batch": self.batch,
            "params": self.params,
            "median_s": median,
            "images_per_s": self.batch as f64 / median,
            "steps_s": self.seconds,
        })
    }
}

/// Times `steps` full training steps (forward, cross-entropy, backward, Adam
/// update) of `model` on random `[batch, 3, h, w]` data on `on` (with several
/// devices, data parallel as in training), after `warmup` untimed steps; the
/// Burn half of the PyTorch comparison in `bench/`, and `bench/gpu.sh`'s
/// measure. Each step starts from the batch in host memory, as in training,
/// and ends when every device has finished it.
pub fn bench_steps(
    on: &Devices,
    model: &ModelConfig,
    size: Size,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<StepTimes> {
    check_batch(batch, on.all().len())?;
    let replicas = Replicas::new(on.all(), None)?;
    replicas.main().seed(0);
    let mut net = model.init(replicas.main());
    let params = net.num_params();
    let config = TrainConfig {
        optimizer: OptimizerKind::Adam,
        weight_decay: 0.0,
        ..TrainConfig::new(model.clone(), size)
    };
    let mut optim = optimizer(&config, replicas.main_spec());
    let (h, w) = (size.height as usize, size.width as usize);
    let classes = model.num_classes() as u32;
    let mut rng = firmware::rng::Rng::new(0);
    let images: Vec<f32> = (0..batch * 3 * h * w)
        .map(|_| rng.range(-1.0, 1.0))
        .collect();
    let masks: Vec<u8> = (0..batch * h * w)
        .map(|_| rng.below(classes) as u8)
        .collect();
    let loss = LossConfig::default();
    let objective = Objective {
        loss: &loss,
        void: 255,
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let started = Instant::now();
        // From host memory, as the loader hands training its batches.
        let step = StepBatch {
            images: images.clone(),
            masks: masks.clone(),
            len: batch,
            hw: (h, w),
        };
        let (_, grads) = replicas.loss_and_grads(&net, step, &objective);
        net = optim.step(1e-3, net, grads);
        // burn-flex runs eagerly; other backends queue their kernels.
        replicas.sync()?;
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(StepTimes {
        device: on.clone(),
        model: model.name(),
        size,
        batch,
        params,
        seconds: times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &std::path::Path, epochs: usize) -> (TrainConfig, RunDir) {
        let model = ModelConfig::Unet {
            num_classes: 11,
            base_width: 8,
            depth: 2,
            bilinear: false,
        };
        let mut config = TrainConfig::new(model, Size::new(48, 32));
        config.data.synthetic_train = 8;
        config.data.synthetic_val = 4;
        config.epochs = Some(epochs);
        config.batch = 4;
        config.lr = 1e-2;
        config.augment = None;
        config.class_weights = ClassWeights::Median;
        (config, RunDir::new(dir.join("run")))
    }

    #[test]
    fn sqrt_median_weights_are_the_roots_of_the_median_weights() {
        let dir = tempfile::tempdir().unwrap();
        let weights = |kind: ClassWeights, name: &str| {
            let (config, _) = tiny(dir.path(), 1);
            let run = RunDir::new(dir.path().join(name));
            let config = TrainConfig {
                class_weights: kind,
                ..config
            };
            train(&config, &run, Start::New, true, |_| {})
                .unwrap()
                .state
                .class_weights
        };
        let median = weights(ClassWeights::Median, "median");
        let sqrt = weights(ClassWeights::SqrtMedian, "sqrt");
        assert!(median.iter().any(|&w| w > 2.0), "{median:?}");
        for (m, s) in median.iter().zip(&sqrt) {
            assert!((m.sqrt() - s).abs() < 1e-6, "{median:?} vs {sqrt:?}");
        }
        let back: TrainConfig = serde_json::from_str(
            &serde_json::to_string(&TrainConfig {
                class_weights: ClassWeights::SqrtMedian,
                ..tiny(dir.path(), 1).0
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(back.class_weights, ClassWeights::SqrtMedian);
    }

    #[test]
    fn encoder_weights_need_linknet_and_leave_no_run_folder_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 1);
        let config = TrainConfig {
            encoder_weights: Some(dir.path().join("resnet18.pth")),
            ..config
        };
        let err = train(&config, &run, Start::New, true, |_| {}).unwrap_err();
        assert!(err.to_string().contains("only LinkNet"), "{err}");
        assert!(!run.path.exists());
    }

    /// Non-void pixels of the validation masks, each asserted to be `dims`.
    fn labelled_val_pixels(config: &TrainConfig, dims: (u32, u32)) -> u64 {
        let (_, val) = config.sources().unwrap();
        (0..val.len())
            .map(|i| {
                let mask = val.load(i).unwrap().mask;
                assert_eq!(mask.dimensions(), dims);
                mask.pixels().filter(|p| p[0] != config.labels.void).count() as u64
            })
            .sum()
    }

    #[test]
    fn trains_on_crops_and_validates_on_whole_images() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 12);
        let size = Size::new(64, 48);
        let config = TrainConfig {
            size,
            crop: Some(Size::new(32, 32)),
            ..config
        };
        let summary = train(&config, &run, Start::New, true, |_| {}).unwrap();
        let h = &summary.state.history;
        assert_eq!(h.len(), 12);
        assert!(
            h[11].train_loss < 0.85 * h[0].train_loss
                && h[11].val_pixel_accuracy > h[0].val_pixel_accuracy,
            "crops must train: {h:?}"
        );
        // Validation scored every labelled pixel of the whole 64x48 scenes.
        assert_eq!(
            summary.last_matrix.total(),
            labelled_val_pixels(&config, (64, 48))
        );
        assert_eq!(run.config().unwrap().crop, Some(Size::new(32, 32)));
    }

    #[test]
    fn progressive_resizing_trains_the_first_epochs_at_half_size() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 12);
        let config = TrainConfig {
            size: Size::new(64, 48),
            progressive: 0.5,
            ..config
        };
        let summary = train(&config, &run, Start::New, true, |_| {}).unwrap();
        let h = &summary.state.history;
        let sizes: Vec<_> = h
            .iter()
            .map(|r| r.train_size.unwrap().to_string())
            .collect();
        // Epochs 1-6 start before half of the steps are done.
        let want: Vec<_> = (0..12)
            .map(|e| if e < 6 { "32x24" } else { "64x48" })
            .collect();
        assert_eq!(sizes, want);
        assert!(
            h[11].train_loss < 0.85 * h[0].train_loss
                && h[11].val_pixel_accuracy > h[0].val_pixel_accuracy,
            "the run must train across the change of size: {h:?}"
        );
        // Validation always scores the whole 64x48 scenes.
        assert_eq!(
            summary.last_matrix.total(),
            labelled_val_pixels(&config, (64, 48))
        );
        let csv = std::fs::read_to_string(run.file("metrics.csv")).unwrap();
        assert!(csv.lines().nth(1).unwrap().ends_with(",32x24"), "{csv}");
        assert!(csv.lines().nth(12).unwrap().ends_with(",64x48"), "{csv}");
    }

    #[test]
    fn val_every_validates_the_first_every_nth_and_the_last_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 7);
        let config = TrainConfig {
            val_every: 3,
            ..config
        };
        let mut lines = Vec::new();
        let summary = train(&config, &run, Start::New, true, |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        let h = &summary.state.history;
        let validated: Vec<usize> = h
            .iter()
            .filter(|r| r.val_miou.is_some() && r.val_pixel_accuracy.is_some())
            .map(|r| r.epoch)
            .collect();
        assert_eq!(validated, [1, 3, 6, 7], "{h:?}");
        assert!([1, 3, 6, 7].contains(&summary.state.best_epoch));
        assert!(lines[1].contains("(not validated)"), "{lines:?}");
        // The last epoch was scored on the whole validation set.
        assert_eq!(
            summary.last_matrix.total(),
            labelled_val_pixels(&config, (48, 32))
        );
        let csv = std::fs::read_to_string(run.file("metrics.csv")).unwrap();
        assert!(csv.lines().nth(2).unwrap().starts_with("2,"), "{csv}");
        assert!(csv.lines().nth(2).unwrap().contains(",,"), "{csv}");
        // The state with unscored epochs reads back: resuming the finished
        // run finds its whole history.
        let resumed = train(&config, &run, Start::Resume, true, |_| {}).unwrap();
        let scored = |h: &[EpochRecord]| -> Vec<(usize, bool)> {
            h.iter().map(|r| (r.epoch, r.val_miou.is_some())).collect()
        };
        assert_eq!(scored(&resumed.state.history), scored(h));
    }

    #[test]
    fn a_crop_larger_than_the_size_is_refused_before_the_run_folder_exists() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 1);
        let config = TrainConfig {
            crop: Some(Size::new(64, 16)),
            ..config
        };
        let err = train(&config, &run, Start::New, true, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--crop 64x16") && err.contains("--size 48x32"),
            "{err}"
        );
        assert!(!run.path.exists());
    }

    #[test]
    fn trains_checkpoints_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 12);
        let mut lines = Vec::new();
        let first = train(
            &TrainConfig {
                epochs: Some(12),
                ..config.clone()
            },
            &run,
            Start::New,
            true,
            |l| lines.push(l.to_string()),
        )
        .unwrap();
        let h = &first.state.history;
        assert_eq!(h.len(), 12);
        assert!(
            h[11].train_loss < 0.85 * h[0].train_loss,
            "loss {} -> {}",
            h[0].train_loss,
            h[11].train_loss
        );
        assert!(h[11].val_pixel_accuracy > h[0].val_pixel_accuracy, "{h:?}");
        assert_eq!(lines.len(), 12);
        let current = first.state.checkpoints.clone().unwrap();
        assert_eq!(current.last, "last-e00012.bpk");
        assert_eq!(current.optimizer, "optimizer-e00012.bpk");
        assert_eq!(
            current.best,
            format!("best-e{:05}.bpk", first.state.best_epoch)
        );
        let mut files: Vec<String> = std::fs::read_dir(&run.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut expected = vec![
            "config.json".to_string(),
            "best.bpk".into(),
            "last.bpk".into(),
            "state.json".into(),
            "metrics.csv".into(),
            "curves.png".into(),
            current.last.clone(),
            current.optimizer.clone(),
            current.best.clone(),
        ];
        expected.sort();
        assert_eq!(files, expected, "earlier epochs' checkpoints are removed");
        // The stable names hold the manifest's checkpoints.
        for (alias, file) in [("best.bpk", &current.best), ("last.bpk", &current.last)] {
            assert_eq!(
                std::fs::read(run.path.join(alias)).unwrap(),
                std::fs::read(run.path.join(file)).unwrap()
            );
        }
        assert_eq!(
            std::fs::read_to_string(run.path.join("metrics.csv"))
                .unwrap()
                .lines()
                .count(),
            13
        );
        assert_eq!(first.state.class_weights.len(), 11);
        // The best checkpoint reloads and scores what training reported.
        let best = run.load_model("best.bpk", &Device::flex()).unwrap();
        let (_, val) = config.sources().unwrap();
        let plan = EvalPlan {
            size: config.size,
            normalize: config.normalize.clone(),
            labels: config.labels.clone(),
            batch: 4,
            workers: 1,
            tta: Tta::None,
        };
        let m = evaluate(&best, &val, &plan, &Device::flex(), |_| {}).unwrap();
        assert!(
            (m.mean_iou() - first.state.best_miou).abs() < 1e-9,
            "{} vs {}",
            m.mean_iou(),
            first.state.best_miou
        );

        // Extend the run to 14 epochs and resume: it continues at epoch 13.
        let mut config = run.config().unwrap();
        config.epochs = Some(14);
        run.write_json("config.json", &config).unwrap();
        let resumed = train(&config, &run, Start::Resume, true, |_| {}).unwrap();
        let epochs: Vec<usize> = resumed.state.history.iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, (1..=14).collect::<Vec<_>>());
    }

    #[test]
    fn a_corrupt_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 1);
        train(&config, &run, Start::New, true, |_| {}).unwrap();
        let bytes = std::fs::read(run.path.join("last.bpk")).unwrap();
        std::fs::write(run.path.join("last.bpk"), &bytes[..bytes.len() / 3]).unwrap();
        let err = train(&config, &run, Start::Resume, true, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("last-e00001.bpk") && err.contains("checkpoint"),
            "{err}"
        );
        // The best checkpoint, written separately, still loads.
        run.load_model("best.bpk", &Device::flex()).unwrap();
    }

    #[test]
    fn config_round_trips() {
        let mut config = TrainConfig::new(ModelConfig::linknet(11, 18, 0.25), Size::new(64, 48));
        config.class_weights = ClassWeights::Given(vec![1.0; 11]);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), config);
    }

    /// A run moves between devices: two epochs on the CPU, the third on wgpu
    /// (Mesa's lavapipe in CI, a real Vulkan on the CPU) and, for
    /// comparison, on the CPU again; then the wgpu epoch's checkpoint exports
    /// to an ONNX file that tract runs like Burn, and resumes on the CPU.
    #[cfg(feature = "wgpu")]
    #[test]
    fn a_cpu_run_resumes_on_wgpu_and_exports() {
        if !crate::device::lavapipe() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 2);
        let first = train(&config, &run, Start::New, true, |_| {}).unwrap();
        assert_eq!(first.state.epochs_done, 2);
        // One more epoch, in two copies of the run.
        let third = TrainConfig {
            epochs: Some(3),
            ..config
        };
        run.write_json("config.json", &third).unwrap();
        let copy = RunDir::new(dir.path().join("cpu"));
        std::fs::create_dir_all(&copy.path).unwrap();
        for entry in std::fs::read_dir(&run.path).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path.join(entry.file_name())).unwrap();
        }
        let wgpu: Devices = "wgpu:cpu".parse().unwrap();
        let on_gpu = train_on(&wgpu, &third, &run, Start::Resume, true, |_| {}).unwrap();
        let on_cpu = train(&third, &copy, Start::Resume, true, |_| {}).unwrap();
        let (g, c) = (&on_gpu.state.history[2], &on_cpu.state.history[2]);
        assert_eq!((g.epoch, c.epoch), (3, 3));
        // The same epoch from the same weights: the loss and the scores agree
        // up to the float rounding of two backends.
        let rel = (g.train_loss - c.train_loss).abs() / c.train_loss;
        assert!(
            rel < 0.02,
            "train loss wgpu {} cpu {}",
            g.train_loss,
            c.train_loss
        );
        let acc = |r: &EpochRecord| r.val_pixel_accuracy.unwrap();
        assert!((acc(g) - acc(c)).abs() < 0.02, "{g:?} {c:?}");
        // The wgpu checkpoint exports and tract agrees with Burn on it.
        let onnx = dir.path().join("model.onnx");
        let report = crate::export::export_run(&run, "last.bpk", None, &onnx, 2).unwrap();
        report.agreement.check().unwrap();
        // And the run goes back to the CPU: a fourth epoch there from the
        // wgpu epoch's weights and optimiser state.
        let fourth = TrainConfig {
            epochs: Some(4),
            ..third
        };
        run.write_json("config.json", &fourth).unwrap();
        let back = train(&fourth, &run, Start::Resume, true, |_| {}).unwrap();
        let h = &back.state.history;
        assert_eq!((h.len(), h[3].epoch), (4, 4));
        assert!(h[3].train_loss < 1.1 * h[2].train_loss, "{h:?}");
    }

    /// Training from scratch on two wgpu devices, data parallel (lavapipe
    /// in CI: two devices on the one adapter), learns: the loss falls with
    /// the composed loss and Burn's AdamW.
    #[cfg(feature = "wgpu")]
    #[test]
    fn training_on_two_wgpu_devices_lowers_the_loss() {
        if !crate::device::lavapipe() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = tiny(dir.path(), 6);
        let two: Devices = "wgpu:cpu,wgpu".parse().unwrap();
        let too_many = TrainConfig {
            batch: 1,
            ..config.clone()
        };
        let err = train_on(&two, &too_many, &run, Start::New, true, |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("--batch 1 cannot be split across 2 devices"),
            "{err}"
        );
        assert!(!run.path.exists(), "a refused run leaves no folder");
        let summary = train_on(&two, &config, &run, Start::New, true, |_| {}).unwrap();
        let h = &summary.state.history;
        assert!(h[5].train_loss < 0.85 * h[0].train_loss, "{h:?}");
    }
}
