//! Times one 3x3 'same' convolution layer, forward and backward, through
//! Burn's autodiff at the shapes U-Net and LinkNet train at, to choose where
//! burn-flex's Winograd kernels pay off. Compare runs with
//! `BURN_FLEX_WINOGRAD=0` and without:
//!   cargo run --release -p host --example conv_bench
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn main() {
    let device = Device::flex().autodiff();
    // (batch, channels in, channels out, side)
    let shapes = [
        (4, 8, 8, 256),
        (4, 16, 16, 256),
        (4, 32, 32, 128),
        (4, 64, 64, 64),
        (4, 128, 128, 32),
        (4, 256, 256, 16),
        (4, 512, 512, 8),
    ];
    for (n, ci, co, side) in shapes {
        let x =
            Tensor::<4>::random([n, ci, side, side], Distribution::Default, &device).require_grad();
        let w = Tensor::<4>::random([co, ci, 3, 3], Distribution::Default, &device).require_grad();
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let mut fwd = Vec::new();
        let mut total = Vec::new();
        for _ in 0..7 {
            let start = Instant::now();
            let y = conv2d(x.clone(), w.clone(), None, options.clone());
            let _: f32 = y.clone().sum().into_scalar();
            fwd.push(start.elapsed().as_secs_f64());
            let grads = y.sum().backward();
            let _: Option<f32> = w.grad(&grads).map(|g| g.sum().into_scalar());
            total.push(start.elapsed().as_secs_f64());
        }
        fwd.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        println!(
            "n{n} {ci:>3}->{co:<3} {side:>3}x{side:<3} forward {:7.2} ms  forward+backward {:7.2} ms",
            fwd[3] * 1e3,
            total[3] * 1e3
        );
    }
}
