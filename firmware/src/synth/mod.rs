//! Synthetic road scenes: the built-in dataset and camera.
//!
//! A fresh clone has no data, so edgeseg makes its own: street scenes with a
//! perspective road, lane markings, pavements, buildings, trees, poles, signs,
//! fences, cars, pedestrians and cyclists, in the CamVid label space
//! ([`crate::classes`]). Each pixel is ray-cast against a world made of flat
//! pieces, so the label mask lines up with the picture exactly.
//!
//! - [`render_scene`] draws an independent scene for a seed: its own street,
//!   lighting, colours, texture noise, camera height, pitch and roll.
//! - [`Drive`] is a sequence: the camera moves forward along one street while
//!   traffic, cyclists and walkers move coherently from frame to frame.
//!
//! Both are deterministic for a seed, work at any size, need no allocator and
//! write into buffers the caller owns.

mod render;
mod world;

use crate::error::Error;
use crate::rng::{Rng, hash3};

/// Checks buffer sizes for a `width` x `height` frame.
fn check(width: usize, height: usize, rgb: &[u8], labels: &[u8]) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize);
    }
    let n = width * height;
    if rgb.len() != 3 * n {
        return Err(Error::BufferSize {
            expected: 3 * n,
            actual: rgb.len(),
        });
    }
    if labels.len() != n {
        return Err(Error::BufferSize {
            expected: n,
            actual: labels.len(),
        });
    }
    Ok(())
}

/// Draws the scene of `seed` into `rgb` (interleaved RGB8, `3 * width * height`
/// bytes) and `labels` (one class id per pixel, `width * height` bytes).
///
/// Scenes are independent: every seed picks its own street, weather, camera and
/// place along the street.
pub fn render_scene(
    seed: u64,
    width: usize,
    height: usize,
    rgb: &mut [u8],
    labels: &mut [u8],
) -> Result<(), Error> {
    check(width, height, rgb, labels)?;
    let mut rng = Rng::new(seed);
    let style = world::Style::random(&mut rng);
    let world_seed = rng.next_u64();
    let z_cam = rng.range(0.0, 50_000.0);
    let t = rng.range(0.0, 1000.0);
    let mut view = world::build_view(&style, world_seed, z_cam, t);
    let cam = render::Camera::new(&style, width, height, style.pitch, style.roll);
    render::render(&style, &mut view, &cam, hash3(seed, 1, 0), rgb, labels);
    Ok(())
}

/// A drive along one street: frame `i` is the view `i / fps` seconds in.
#[derive(Clone, Debug)]
pub struct Drive {
    seed: u64,
    style: world::Style,
    world_seed: u64,
    z_start: f32,
    fps: f32,
}

impl Drive {
    /// A drive at the default 15 frames per second.
    pub fn new(seed: u64) -> Drive {
        Drive::with_fps(seed, 15.0)
    }

    /// A drive sampled at `fps` frames per second (clamped to at least 1).
    pub fn with_fps(seed: u64, fps: f32) -> Drive {
        let mut rng = Rng::new(seed ^ 0xD21E);
        let mut style = world::Style::random(&mut rng);
        // A forward-facing dashboard camera: level on average.
        style.pitch *= 0.5;
        style.roll *= 0.3;
        Drive {
            seed,
            style,
            world_seed: rng.next_u64(),
            z_start: rng.range(0.0, 10_000.0),
            fps: fps.max(1.0),
        }
    }

    /// Camera speed in metres per second.
    pub fn speed(&self) -> f32 {
        self.style.speed
    }

    /// Frames per second of the drive.
    pub fn fps(&self) -> f32 {
        self.fps
    }

    /// Draws frame `index` (see [`render_scene`] for the buffer layout).
    pub fn render_frame(
        &self,
        index: u64,
        width: usize,
        height: usize,
        rgb: &mut [u8],
        labels: &mut [u8],
    ) -> Result<(), Error> {
        check(width, height, rgb, labels)?;
        let t = index as f32 / self.fps;
        let z_cam = self.z_start + self.style.speed * t;
        // Small bumps of the road shake the camera.
        let pitch = self.style.pitch + 0.004 * libm::sinf(t * 2.3) + 0.002 * libm::sinf(t * 7.1);
        let roll = self.style.roll + 0.003 * libm::sinf(t * 1.7);
        let mut view = world::build_view(&self.style, self.world_seed, z_cam, t);
        let cam = render::Camera::new(&self.style, width, height, pitch, roll);
        render::render(
            &self.style,
            &mut view,
            &cam,
            hash3(self.seed, 2, index),
            rgb,
            labels,
        );
        Ok(())
    }
}

#[cfg(all(test, feature = "std"))]
mod tests;
