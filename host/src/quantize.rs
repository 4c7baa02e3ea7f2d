//! `edgeseg quantize`: a float ONNX file and calibration pictures in, an int8
//! ONNX file out, and a report that proves what tract does with it: integer
//! kernels, accuracy against the float model, sizes and latency.

use std::path::{Path, PathBuf};
use std::time::Instant;

use firmware::Size;
use firmware::engine::{Engine, model_info};
use firmware::metrics::ConfusionMatrix;
use image::RgbImage;
use model_export::ModelInfo;
use model_export::quant::{QuantOptions, QuantSummary, quantize};

use crate::data::{BatchPlan, DataSpec, Normalize, Source, batches};
use crate::error::{Error, Result};
use crate::inference::argmax;

/// What to quantise and how.
#[derive(Clone, Debug)]
pub struct QuantizeJob {
    /// The float ONNX file (from `edgeseg export`, or any file of the supported ops).
    pub model: PathBuf,
    /// Calibration pictures: a folder of images, or a dataset whose training
    /// split is used.
    pub calib: PathBuf,
    /// Calibration pictures to use at most.
    pub calib_images: usize,
    /// The int8 file to write.
    pub out: PathBuf,
    /// Weight scheme, calibration, equalisation, bias correction.
    pub options: QuantOptions,
    /// A labelled dataset whose validation split scores float against int8;
    /// `None` for synthetic scenes.
    pub data: Option<PathBuf>,
    /// Validation images to score at most.
    pub eval_images: usize,
}

/// Float against int8 on the same images.
#[derive(Clone, Debug)]
pub struct QuantReport {
    /// What the quantiser did.
    pub summary: QuantSummary,
    /// The model's metadata (int8).
    pub info: ModelInfo,
    /// Sizes of the float and int8 files in bytes.
    pub bytes: [usize; 2],
    /// Convolution kernels of the int8 model (tract's matrix products and
    /// edgeseg's int8 convolutions): integer, integer with fused
    /// requantisation, total.
    pub kernels: [usize; 3],
    /// Median latency in milliseconds of the float and int8 models in tract.
    pub latency_ms: [f64; 2],
    /// Validation confusion matrices of the float and int8 models.
    pub matrices: [ConfusionMatrix; 2],
    /// Share of pixels where both predict the same class.
    pub agreement: f64,
    /// Validation images scored.
    pub images: usize,
}

impl QuantReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        let [f, q] = &self.matrices;
        let mut s = format!("{:<12} {:>9} {:>9}\n", "class IoU", "float32", "int8");
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for ((name, a), b) in self.info.class_names.iter().zip(f.iou()).zip(q.iou()) {
            s += &format!("{name:<12} {:>9} {:>9}\n", cell(a), cell(b));
        }
        s += &format!(
            "{:<12} {:>9.4} {:>9.4}\n",
            "mean IoU",
            f.mean_iou(),
            q.mean_iou()
        );
        s += &format!(
            "{:<12} {:>9.4} {:>9.4}\n",
            "pixel acc",
            f.pixel_accuracy(),
            q.pixel_accuracy()
        );
        s += &format!(
            "pixel agreement float/int8 {:.2}% on {} validation images\n",
            100.0 * self.agreement,
            self.images
        );
        s += &format!(
            "file size {:.2} MB -> {:.2} MB; tract latency {:.1} ms -> {:.1} ms ({:.2}x)\n",
            self.bytes[0] as f64 / 1e6,
            self.bytes[1] as f64 / 1e6,
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[0] / self.latency_ms[1]
        );
        s += &format!(
            "convolution kernels: {} of {} run on int8 ({} with fused requantisation); {} nodes stay float\n",
            self.kernels[0], self.kernels[2], self.kernels[1], self.summary.float_nodes
        );
        if cfg!(target_arch = "x86_64") && self.latency_ms[1] > 4.0 * self.latency_ms[0] {
            s += "note: tract's AVX2 int8 kernel was measured 14x slower than its AVX one on some \
                  x86 CPUs; try TRACT_CPU_ISA=-avx2 (BENCHMARKS.md). On ARM the int8 kernels use SDOT.\n";
        }
        s
    }
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    firmware::source::image_files(dir).map_err(|e| Error::io(dir, e))
}

/// Up to `n` calibration pictures from `dir` (a folder of images, or a dataset
/// whose `train/` or `images/` folder holds them), resized to `size` and normalised.
pub fn calibration_inputs(
    dir: &Path,
    size: Size,
    normalize: &Normalize,
    n: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut files = image_files(dir)?;
    for sub in ["train", "images", "leftImg8bit/train"] {
        if files.is_empty() && dir.join(sub).is_dir() {
            files = image_files(&dir.join(sub))?;
        }
    }
    if files.is_empty() {
        return Err(Error::Split {
            dir: dir.to_path_buf(),
            what: "no PNG or JPEG pictures to calibrate with (looked in it, train/ and images/)"
                .into(),
        });
    }
    // Spread the picks over the whole folder.
    let step = files.len().div_ceil(n.max(1)).max(1);
    files
        .iter()
        .step_by(step)
        .take(n)
        .map(|path| {
            let img = image::open(path).map_err(|source| Error::Image {
                path: path.clone(),
                source,
            })?;
            Ok(normalized(&img.into_rgb8(), size, normalize))
        })
        .collect()
}

fn normalized(img: &RgbImage, size: Size, normalize: &Normalize) -> Vec<f32> {
    let mut out = vec![0.0; 3 * size.area()];
    crate::data::board_input(img, size, normalize, &mut out);
    out
}

fn median_ms(engine: &mut Engine, input: &[f32], runs: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    engine.run(input)?;
    for _ in 0..runs {
        let t = Instant::now();
        engine.run(input)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Quantises `job.model`, writes `job.out`, and reports float against int8.
pub fn quantize_file(job: &QuantizeJob) -> Result<QuantReport> {
    let what = job.model.display().to_string();
    let float_bytes = std::fs::read(&job.model).map_err(|e| Error::io(&job.model, e))?;
    let in_model = |source: model_export::Error| Error::Model {
        path: job.model.clone(),
        source,
    };
    let proto = model_export::onnx::decode_model(&float_bytes, &what).map_err(in_model)?;
    let graph = model_export::onnx::from_model(&proto).map_err(in_model)?;
    let info = model_info(&proto).map_err(|e| in_model(e.into()))?;
    let normalize = Normalize {
        mean: info.mean,
        std: info.std,
    };
    let size = info.input_size;
    let calib = calibration_inputs(&job.calib, size, &normalize, job.calib_images)?;
    let (int8, summary) = quantize(&graph, &info, &calib, job.options).map_err(in_model)?;
    let int8_bytes = prost::Message::encode_to_vec(&int8);
    let mut float = Engine::from_bytes(&float_bytes, &what)?;
    let mut quant = Engine::from_bytes(&int8_bytes, "the int8 model")?;
    let kernels = quant.matmul_kernels();
    let integer = kernels.iter().filter(|k| k.integer).count();
    let fused = kernels
        .iter()
        .filter(|k| k.integer && k.fused_requantization)
        .count();
    if integer == 0 {
        return Err(Error::Invalid(format!(
            "tract runs none of the int8 model's convolutions in integers: {kernels:#?}"
        )));
    }

    // Score both on labelled validation data.
    let spec = DataSpec {
        root: job.data.clone(),
        val_fraction: 0.2,
        synthetic_train: 0,
        synthetic_val: job.eval_images,
        seed: 0,
        val_sequences: Vec::new(),
        train_on_val: false,
    };
    let source = Source::open(&spec, "val", size)?;
    let void = info.void.unwrap_or(u8::MAX);
    let plan = BatchPlan {
        batch: 1,
        size,
        augment: None,
        normalize,
        shuffle: None,
        void,
        workers: 1,
        native_masks: false,
        crop: None,
    };
    let classes = info.num_classes();
    let mut matrices = [
        ConfusionMatrix::new(classes, info.void),
        ConfusionMatrix::new(classes, info.void),
    ];
    let (mut same, mut total, mut images) = (0usize, 0usize, 0usize);
    let mut first = None;
    for batch in batches(&source, &plan).take(job.eval_images) {
        let batch = batch?;
        let f = argmax(float.run(&batch.images)?, classes);
        let q = argmax(quant.run(&batch.images)?, classes);
        matrices[0].add(&batch.masks, &f);
        matrices[1].add(&batch.masks, &q);
        same += f.iter().zip(&q).filter(|(a, b)| a == b).count();
        total += f.len();
        images += 1;
        first.get_or_insert(batch.images);
    }
    let input = first.unwrap_or_else(|| calib[0].clone());
    // Alternate so both see the same machine state.
    let mut latency = [0.0; 2];
    for _ in 0..2 {
        latency[0] += median_ms(&mut float, &input, 5)? / 2.0;
        latency[1] += median_ms(&mut quant, &input, 5)? / 2.0;
    }
    crate::io::write_atomic(&job.out, &int8_bytes)?;
    let mut info = info;
    info.precision = "int8".into();
    Ok(QuantReport {
        summary,
        info,
        bytes: [float_bytes.len(), int8_bytes.len()],
        kernels: [integer, fused, kernels.len()],
        latency_ms: latency,
        matrices,
        agreement: same as f64 / total.max(1) as f64,
        images,
    })
}
