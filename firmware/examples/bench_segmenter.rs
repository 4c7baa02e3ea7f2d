//! Bare `Segmenter` throughput on camera-like frames, the reference for the
//! pipeline benchmark: `cargo run --release -p firmware --example bench_segmenter
//! -- MODEL.onnx [FRAMES] [WxH] [OUT.yuv]`. Renders synthetic scenes at WxH
//! (640x480 by default), converts them to I420 as a Pi camera delivers them,
//! times `segment` per stage, and optionally writes the frames as a raw stream
//! for `edgeseg-run --source stdin:yuv420:WxH`.
use std::io::Write;
use std::time::Instant;

use firmware::Size;
use firmware::frame::{Frame, PixelFormat};
use firmware::segmenter::Segmenter;

fn i420(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let stride = PixelFormat::I420.camera_stride(w as u32);
    let mut out = vec![0u8; PixelFormat::I420.frame_len(h as u32, stride)];
    let (cs, plane) = (stride / 2, stride * h);
    for y in 0..h {
        for x in 0..w {
            let p = &rgb[3 * (y * w + x)..][..3];
            let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
            out[y * stride + x] = (16.0 + 0.257 * r + 0.504 * g + 0.098 * b) as u8;
            if x % 2 == 0 && y % 2 == 0 {
                out[plane + (y / 2) * cs + x / 2] =
                    (128.0 - 0.148 * r - 0.291 * g + 0.439 * b) as u8;
                out[plane + cs * h.div_ceil(2) + (y / 2) * cs + x / 2] =
                    (128.0 + 0.439 * r - 0.368 * g - 0.071 * b) as u8;
            }
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = std::path::Path::new(args.get(1).map(String::as_str).unwrap_or("model.onnx"));
    let frames: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let size: Size = args.get(3).map_or("640x480", String::as_str).parse()?;
    let (w, h) = (size.width as usize, size.height as usize);
    let mut segmenter = Segmenter::load(model)?;
    let drive = firmware::synth::Drive::new(3);
    let mut yuv = Vec::new();
    let (mut rgb, mut labels) = (vec![0u8; 3 * w * h], vec![0u8; w * h]);
    for i in 0..frames.min(60) {
        drive.render_frame(i as u64, w, h, &mut rgb, &mut labels)?;
        yuv.push(i420(&rgb, w, h));
    }
    if let Some(path) = args.get(4) {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        for i in 0..frames {
            file.write_all(&yuv[i % yuv.len()])?;
        }
    }
    let mut times = Vec::new();
    let mut pre_post = Vec::new();
    let mut infer = Vec::new();
    for i in 0..frames + 2 {
        let frame = Frame::camera(PixelFormat::I420, size, &yuv[i % yuv.len()])?;
        let t = Instant::now();
        segmenter.segment(&frame)?;
        if i >= 2 {
            let s = segmenter.times();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            pre_post.push((s.preprocess + s.postprocess).as_secs_f64() * 1e3);
            infer.push(s.inference.as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t, p, inf) = (
        median(&mut times),
        median(&mut pre_post),
        median(&mut infer),
    );
    let info = segmenter.info();
    println!(
        "{} {} at {}: bare segmenter on {size} I420: {t:.1} ms/frame ({:.1} FPS); inference {inf:.1} ms; preprocess+postprocess {p:.2} ms",
        info.architecture,
        info.precision,
        info.input_size,
        1e3 / t
    );
    Ok(())
}
