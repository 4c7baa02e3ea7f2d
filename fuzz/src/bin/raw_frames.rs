//! The raw-frame reader on arbitrary input, as `stdin:FORMAT:WxH` and a camera
//! pipe deliver it: the source description's format and size are parsed
//! within the frame limits, the stream is cut into whole frames (a truncated
//! last one dropped), and each frame is converted and resized into a model's
//! input. No input may panic or hang; every whole frame is a valid frame, and
//! every value that reaches the model is finite.

use firmware::Size;
use firmware::frame::{Frame, Normalization, PixelFormat, Preprocessor};
use firmware::size::frame_size;

/// Largest model input the target resizes to (each side).
const MAX_OUT: u32 = 64;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // `FORMAT:WxH:OWxOH` up to the first newline (the source description
        // and the model's input size), then the stream.
        let Some(newline) = data.iter().position(|&b| b == b'\n') else {
            return;
        };
        let (spec, stream) = (&data[..newline], &data[newline + 1..]);
        let Ok(spec) = std::str::from_utf8(spec) else {
            return;
        };
        let [format, size, out] = spec.split(':').collect::<Vec<_>>()[..] else {
            return;
        };
        let (Some(format), Ok(size), Ok(out)) = (
            PixelFormat::from_name(format),
            frame_size(size),
            out.parse::<Size>(),
        ) else {
            return;
        };
        if out.width == 0 || out.height == 0 || out.width > MAX_OUT || out.height > MAX_OUT {
            return;
        }
        let len = format.frame_len(size.height, format.camera_stride(size.width));
        assert!(len > 0, "{format:?} {size}: empty frames");
        let norm = Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let mut pre = Preprocessor::new();
        let mut input = vec![f32::NAN; 3 * (out.width * out.height) as usize];
        for chunk in stream.chunks_exact(len) {
            let frame = Frame::camera(format, size, chunk).expect("a whole frame is a frame");
            pre.run(&frame, out, &norm, &mut input)
                .expect("a frame resizes");
            assert!(
                input.iter().all(|v| v.is_finite()),
                "{format:?} {size} -> {out}"
            );
        }
    });
}
