//! The convolution kernels training runs on (the patched burn-flex in
//! `vendor/burn-flex`: im2col/col2im + GEMM) against the definition of the
//! convolution, forward and both gradients, through Burn's autodiff exactly as
//! a training step calls them. Shapes cover what the models use (3x3 same
//! padding, the 7x7/2 LinkNet stem, 1x1, 2x2/2 and 3x3/2 transposed) and the
//! awkward cases (groups, dilation, odd sizes, asymmetric padding, batch 1
//! and batches larger than the thread count).

use burn::prelude::*;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn tensor(data: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}

/// One convolution case: `x [n, c_in, h, w]`, weight `[c_out, c_in/groups,
/// kh, kw]`, padding `(begin, end)` per axis.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
}

impl Case {
    fn out_hw(&self) -> [usize; 2] {
        std::array::from_fn(|a| {
            (self.hw[a] + self.padding[a].0 + self.padding[a].1
                - self.dilation[a] * (self.kernel[a] - 1)
                - 1)
                / self.stride[a]
                + 1
        })
    }

    /// Calls `f(n, o, c, oy, ox, iy, ix, i, j)` for every term of the sum that
    /// defines the convolution, `c` being the weight's input-channel index
    /// within the group and `ci` below the absolute input channel.
    fn for_each_term(&self, mut f: impl FnMut([usize; 4], usize, [usize; 4])) {
        let [oh, ow] = self.out_hw();
        let cig = self.c_in / self.groups;
        let cog = self.c_out / self.groups;
        for n in 0..self.n {
            for o in 0..self.c_out {
                for c in 0..cig {
                    let ci = (o / cog) * cig + c;
                    for y in 0..oh {
                        for x in 0..ow {
                            for i in 0..self.kernel[0] {
                                for j in 0..self.kernel[1] {
                                    let iy = (y * self.stride[0] + i * self.dilation[0]) as isize
                                        - self.padding[0].0 as isize;
                                    let ix = (x * self.stride[1] + j * self.dilation[1]) as isize
                                        - self.padding[1].0 as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= self.hw[0] as isize
                                        || ix >= self.hw[1] as isize
                                    {
                                        continue;
                                    }
                                    f(
                                        [n, o, y, x],
                                        ci,
                                        [c, i, j, iy as usize * self.hw[1] + ix as usize],
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn conv2d_forward_and_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    let same = |k: usize| [(k / 2, k / 2); 2];
    let cases = [
        // U-Net level: 3x3 same, batch 4 with 16 channels (the shape that
        // used to fall into burn-flex's small-channel path)
        Case {
            n: 4,
            c_in: 16,
            c_out: 16,
            hw: [12, 10],
            kernel: [3, 3],
            stride: [1, 1],
            padding: same(3),
            dilation: [1, 1],
            groups: 1,
        },
        // RGB input layer, batch 1
        Case {
            n: 1,
            c_in: 3,
            c_out: 8,
            hw: [9, 11],
            kernel: [3, 3],
            stride: [1, 1],
            padding: same(3),
            dilation: [1, 1],
            groups: 1,
        },
        // LinkNet stem 7x7/2, odd size
        Case {
            n: 2,
            c_in: 3,
            c_out: 4,
            hw: [13, 15],
            kernel: [7, 7],
            stride: [2, 2],
            padding: same(7),
            dilation: [1, 1],
            groups: 1,
        },
        // 1x1 projection and 1x1/2 shortcut
        Case {
            n: 3,
            c_in: 6,
            c_out: 5,
            hw: [7, 8],
            kernel: [1, 1],
            stride: [1, 1],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            groups: 1,
        },
        Case {
            n: 2,
            c_in: 4,
            c_out: 6,
            hw: [7, 9],
            kernel: [1, 1],
            stride: [2, 2],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            groups: 1,
        },
        // groups, dilation, unequal strides, asymmetric padding
        Case {
            n: 5,
            c_in: 4,
            c_out: 6,
            hw: [9, 7],
            kernel: [3, 2],
            stride: [2, 1],
            padding: [(1, 0), (0, 2)],
            dilation: [1, 2],
            groups: 2,
        },
        Case {
            n: 2,
            c_in: 4,
            c_out: 4,
            hw: [8, 8],
            kernel: [3, 3],
            stride: [1, 1],
            padding: same(3),
            dilation: [2, 2],
            groups: 4,
        },
        // kernel larger than the image
        Case {
            n: 1,
            c_in: 2,
            c_out: 2,
            hw: [3, 3],
            kernel: [5, 5],
            stride: [1, 1],
            padding: same(5),
            dilation: [1, 1],
            groups: 1,
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let [oh, ow] = case.out_hw();
        let x_shape = [case.n, case.c_in, case.hw[0], case.hw[1]];
        let w_shape = [
            case.c_out,
            case.c_in / case.groups,
            case.kernel[0],
            case.kernel[1],
        ];
        let y_shape = [case.n, case.c_out, oh, ow];
        let (xv, wv) = (
            values(x_shape.iter().product(), 3 * k as u64 + 1),
            values(w_shape.iter().product(), 3 * k as u64 + 2),
        );
        let yv = values(y_shape.iter().product(), 3 * k as u64 + 3);

        let x = tensor(&xv, x_shape, &device).require_grad();
        let w = tensor(&wv, w_shape, &device).require_grad();
        let options =
            ConvOptions::new_with_padding(case.stride, case.padding, case.dilation, case.groups);
        let out = conv2d(x.clone(), w.clone(), None, options);
        assert_eq!(out.dims(), y_shape, "case {k} {case:?}: output shape");
        let loss = (out.clone() * tensor(&yv, y_shape, &device)).sum();
        let grads = loss.backward();

        let mut fwd = vec![0f64; yv.len()];
        let mut dx = vec![0f64; xv.len()];
        let mut dw = vec![0f64; wv.len()];
        let plane = case.hw[0] * case.hw[1];
        let kk = case.kernel[0] * case.kernel[1];
        case.for_each_term(|[n, o, y, x_], ci, [c, i, j, pix]| {
            let out_i = ((n * case.c_out + o) * oh + y) * ow + x_;
            let x_i = (n * case.c_in + ci) * plane + pix;
            let w_i = (o * (case.c_in / case.groups) + c) * kk + i * case.kernel[1] + j;
            fwd[out_i] += wv[w_i] as f64 * xv[x_i] as f64;
            dx[x_i] += wv[w_i] as f64 * yv[out_i] as f64;
            dw[w_i] += xv[x_i] as f64 * yv[out_i] as f64;
        });
        let what = |s: &str| format!("case {k} {case:?}: {s}");
        assert_close(&what("forward"), &to_vec(out), &fwd);
        assert_close(
            &what("input gradient"),
            &to_vec(x.grad(&grads).unwrap()),
            &dx,
        );
        assert_close(
            &what("weight gradient"),
            &to_vec(w.grad(&grads).unwrap()),
            &dw,
        );
    }
}

#[test]
fn conv_transpose2d_forward_and_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    // (n, c_in, c_out, hw, kernel, stride, padding, padding_out, dilation, groups)
    let cases = [
        // U-Net up-sampling 2x2/2, batch 4
        (4, 16, 8, [5, 6], [2, 2], [2, 2], [0, 0], [0, 0], [1, 1], 1),
        // LinkNet decoder 3x3/2, padding 1, output padding 1
        (2, 8, 4, [4, 5], [3, 3], [2, 2], [1, 1], [1, 1], [1, 1], 1),
        // groups, dilation, unequal strides
        (3, 4, 6, [3, 4], [3, 2], [1, 2], [1, 0], [0, 1], [2, 1], 2),
        // batch 1, 1x1
        (1, 3, 2, [4, 4], [1, 1], [1, 1], [0, 0], [0, 0], [1, 1], 1),
    ];
    for (k, &(n, c_in, c_out, hw, kernel, stride, padding, padding_out, dilation, groups)) in
        cases.iter().enumerate()
    {
        let out_hw: [usize; 2] = std::array::from_fn(|a| {
            (hw[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + padding_out[a] + 1
                - 2 * padding[a]
        });
        let x_shape = [n, c_in, hw[0], hw[1]];
        let w_shape = [c_in, c_out / groups, kernel[0], kernel[1]];
        let y_shape = [n, c_out, out_hw[0], out_hw[1]];
        let xv = values(x_shape.iter().product(), 100 + k as u64);
        let wv = values(w_shape.iter().product(), 200 + k as u64);
        let yv = values(y_shape.iter().product(), 300 + k as u64);

        let x = tensor(&xv, x_shape, &device).require_grad();
        let w = tensor(&wv, w_shape, &device).require_grad();
        let options = ConvTransposeOptions::new(stride, padding, padding_out, dilation, groups);
        let out = conv_transpose2d(x.clone(), w.clone(), None, options);
        assert_eq!(out.dims(), y_shape, "case {k}: output shape");
        let loss = (out.clone() * tensor(&yv, y_shape, &device)).sum();
        let grads = loss.backward();

        let mut fwd = vec![0f64; yv.len()];
        let mut dx = vec![0f64; xv.len()];
        let mut dw = vec![0f64; wv.len()];
        let (cig, cog) = (c_in / groups, c_out / groups);
        for b in 0..n {
            for ci in 0..c_in {
                for o in 0..cog {
                    let co = (ci / cig) * cog + o;
                    for iy in 0..hw[0] {
                        for ix in 0..hw[1] {
                            for i in 0..kernel[0] {
                                for j in 0..kernel[1] {
                                    let oy = (iy * stride[0] + i * dilation[0]) as isize
                                        - padding[0] as isize;
                                    let ox = (ix * stride[1] + j * dilation[1]) as isize
                                        - padding[1] as isize;
                                    if oy < 0
                                        || ox < 0
                                        || oy >= out_hw[0] as isize
                                        || ox >= out_hw[1] as isize
                                    {
                                        continue;
                                    }
                                    let out_i = ((b * c_out + co) * out_hw[0] + oy as usize)
                                        * out_hw[1]
                                        + ox as usize;
                                    let x_i = ((b * c_in + ci) * hw[0] + iy) * hw[1] + ix;
                                    let w_i = ((ci * cog + o) * kernel[0] + i) * kernel[1] + j;
                                    fwd[out_i] += wv[w_i] as f64 * xv[x_i] as f64;
                                    dx[x_i] += wv[w_i] as f64 * yv[out_i] as f64;
                                    dw[w_i] += xv[x_i] as f64 * yv[out_i] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let what = |s: &str| format!("transposed case {k}: {s}");
        assert_close(&what("forward"), &to_vec(out), &fwd);
        assert_close(
            &what("input gradient"),
            &to_vec(x.grad(&grads).unwrap()),
            &dx,
        );
        assert_close(
            &what("weight gradient"),
            &to_vec(w.grad(&grads).unwrap()),
            &dw,
        );
    }
}

#[test]
fn conv2d_bias_is_added_per_channel() {
    let device = Device::flex();
    let x = tensor(&values(2 * 3 * 5 * 5, 7), [2, 3, 5, 5], &device);
    let w = tensor(&values(4 * 3 * 3 * 3, 8), [4, 3, 3, 3], &device);
    let bias = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, -2.0, 3.0, 0.5], [4]), &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let with = to_vec(conv2d(x.clone(), w.clone(), Some(bias), options.clone()));
    let without = to_vec(conv2d(x, w, None, options));
    for (i, (a, b)) in with.iter().zip(&without).enumerate() {
        let c = (i / 25) % 4;
        let want = [1.0, -2.0, 3.0, 0.5][c];
        assert!(
            (a - b - want).abs() < 1e-5,
            "element {i}: {a} - {b} != {want}"
        );
    }
}
