//! Ray casting of a [`View`] into an RGB image and its label mask.
//!
//! Every pixel casts one ray from the camera; the nearest surface it meets gives
//! both the colour and the class, so labels line up with the picture exactly.

use libm::{cosf, expf, fabsf, floorf, sinf, sqrtf};

use super::world::{Item, Kind, MAX_DEPTH, Rgb, Style, View};
use crate::classes::Class;
use crate::rng::{fbm, pixel_noise, value_noise};

/// Projection of one frame: camera-level image coordinates to ray directions.
pub(crate) struct Camera {
    pub width: usize,
    pub height: usize,
    f: f32,
    cx: f32,
    cy: f32,
    v_horizon: f32,
    cos_roll: f32,
    sin_roll: f32,
    cam_h: f32,
}

impl Camera {
    pub(crate) fn new(style: &Style, width: usize, height: usize, pitch: f32, roll: f32) -> Camera {
        let f = style.focal * width as f32;
        let cy = height as f32 / 2.0;
        Camera {
            width,
            height,
            f,
            cx: width as f32 / 2.0,
            cy,
            v_horizon: style.horizon * height as f32 - f * libm::tanf(pitch),
            cos_roll: cosf(roll),
            sin_roll: sinf(roll),
            cam_h: style.cam_h,
        }
    }

    /// Camera-level coordinates of pixel centre `(px, py)`, undoing the roll.
    fn level(&self, px: usize, py: usize) -> (f32, f32) {
        let (x, y) = (px as f32 + 0.5 - self.cx, py as f32 + 0.5 - self.cy);
        (
            self.cx + x * self.cos_roll - y * self.sin_roll,
            self.cy + x * self.sin_roll + y * self.cos_roll,
        )
    }

    fn project(&self, x: f32, y: f32, z: f32) -> (f32, f32) {
        (
            self.cx + self.f * x / z,
            self.v_horizon + self.f * (self.cam_h - y) / z,
        )
    }

    /// Screen bounds of an item (camera-level pixels), for cheap rejection.
    pub(crate) fn bbox(&self, item: &Item) -> [f32; 4] {
        let (x0, x1, z0, z1) = if item.side {
            (item.x, item.x, item.z0.max(0.5), item.z1.max(0.5))
        } else {
            (item.x - item.half_w, item.x + item.half_w, item.z0, item.z0)
        };
        let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
        for (x, z) in [(x0, z0), (x1, z0), (x0, z1), (x1, z1)] {
            for y in [0.0, item.h] {
                let (u, v) = self.project(x, y, z);
                b[0] = b[0].min(u);
                b[1] = b[1].min(v);
                b[2] = b[2].max(u);
                b[3] = b[3].max(v);
            }
        }
        b
    }
}

/// What a ray met.
struct Hit {
    class: Class,
    color: Rgb,
    dist: f32,
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(c: Rgb, s: f32) -> Rgb {
    [c[0] * s, c[1] * s, c[2] * s]
}

fn in_circle(x: f32, y: f32, cx: f32, cy: f32, r: f32) -> bool {
    (x - cx) * (x - cx) + (y - cy) * (y - cy) < r * r
}

/// Distance from `p` to the segment `a`-`b`, below `r`.
fn near_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32), r: f32) -> bool {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    qx * qx + qy * qy < r * r
}

/// The class and colour of `item` at local coordinates `(s, y)` in metres, or
/// `None` where the ray passes through (between legs, fence slats, ...).
///
/// For faces `s` runs across from the item's centre; for sides it runs along the
/// street from the item's near end.
fn surface(item: &Item, s: f32, y: f32, tex: u32) -> Option<(Class, Rgb)> {
    let [c0, c1, c2] = item.colors;
    let h = item.h;
    let class = item.kind.class();
    match item.kind {
        Kind::Facade | Kind::FacadeEnd => {
            if y > h {
                return None;
            }
            // Texture coordinate along the wall, fixed to the world.
            let u = if item.side {
                s + item.tex_z
            } else {
                s * item.dir + 40.0
            };
            let floor_h = 3.1 + (item.variant % 4) as f32 * 0.15;
            let bay = 2.4 + (item.variant % 3) as f32 * 0.5;
            let wall_tex = 0.9 + 0.2 * fbm(u * 1.5, y * 1.5, tex ^ item.variant);
            let mut c = scale(c0, wall_tex);
            if y > h - 0.35 {
                c = scale(c2, 0.85);
            } else if y < 3.2 && item.variant.is_multiple_of(3) {
                // A shop front: one band of glass.
                let fu = u - floorf(u / 6.0) * 6.0;
                if (0.5..2.6).contains(&y) && (0.4..5.4).contains(&fu) {
                    c = scale(c1, 0.9 + 0.3 * value_noise(u * 0.7, y, tex));
                }
            } else {
                let fy = y - floorf(y / floor_h) * floor_h;
                let fu = u - floorf(u / bay) * bay;
                if (0.9..2.3).contains(&fy) && (0.55..bay - 0.55).contains(&fu) {
                    let sky = 0.7 + 0.6 * value_noise(u * 0.3, y * 0.3, tex ^ 77);
                    c = scale(c1, sky);
                } else if (0.8..0.9).contains(&fy) && (0.45..bay - 0.45).contains(&fu) {
                    c = c2;
                }
            }
            if !item.side {
                c = scale(c, 0.85);
            }
            Some((class, c))
        }
        Kind::Fence => {
            let posts = s - floorf(s / 2.2) * 2.2 < 0.1;
            let slats = item.variant.is_multiple_of(2);
            let solid = if slats {
                s * 8.0 - floorf(s * 8.0) < 0.65
            } else {
                (h - 0.2..h).contains(&y) || (0.35..0.5).contains(&y) || fabsf(y - h * 0.6) < 0.06
            };
            (y < h && (posts || solid)).then_some((class, if posts { c1 } else { c0 }))
        }
        Kind::Tree => {
            let r = item.phase;
            let trunk_top = h - 2.2 * r;
            if fabsf(s) < 0.12 + 0.03 * r && y < trunk_top + r * 0.5 {
                return Some((
                    class,
                    scale(c1, 0.8 + 0.3 * value_noise(s * 20.0, y * 3.0, tex)),
                ));
            }
            let cy = trunk_top + r * 1.05;
            let off = (item.variant % 7) as f32 * 0.07 - 0.2;
            let n = value_noise(s * 2.2 + off * 10.0, y * 2.2, tex ^ item.variant);
            let d = |cx: f32, cy: f32, rx: f32, ry: f32| {
                let (dx, dy) = ((s - cx) / rx, (y - cy) / ry);
                dx * dx + dy * dy
            };
            let inside = d(0.0, cy, r, r * 1.05) < 0.8 + 0.5 * n
                || d(off * r * 2.0, cy + 0.45 * r, 0.75 * r, 0.75 * r) < 0.8 + 0.5 * n
                || d(-off * r * 2.5, cy - 0.2 * r, 0.7 * r, 0.6 * r) < 0.8 + 0.5 * n;
            inside.then(|| {
                let leaf =
                    0.55 + 0.6 * value_noise(s * 9.0, y * 9.0, tex ^ 5) + 0.25 * (y - cy) / r;
                (class, scale(c0, leaf))
            })
        }
        Kind::Pole | Kind::Lamp => {
            let pole = fabsf(s) < 0.08 && y < h;
            let arm = item.kind == Kind::Lamp
                && (h - 0.12..h).contains(&y)
                && s * item.dir > 0.0
                && s * item.dir < 1.5;
            let head = item.kind == Kind::Lamp
                && (h - 0.3..h - 0.05).contains(&y)
                && (1.1..1.6).contains(&(s * item.dir));
            if head && y < h - 0.2 {
                return Some((class, c1));
            }
            (pole || arm || head).then(|| (class, scale(c0, 0.85 + 0.3 * (s + 0.08) / 0.16)))
        }
        Kind::Sign | Kind::TrafficLight => {
            let top = h - 0.9;
            if fabsf(s) < 0.05 && y < top + 0.1 {
                return Some((Class::Pole, scale(c0, 0.9 + 0.2 * (s + 0.05) / 0.1)));
            }
            if item.kind == Kind::TrafficLight {
                if fabsf(s) < 0.18 && (top..h).contains(&y) {
                    let lit = (item.variant % 3) as f32;
                    let lamp_y = top + 0.15 + 0.3 * lit;
                    let c = if in_circle(s, y, 0.0, lamp_y, 0.09) {
                        [
                            [230.0, 40.0, 30.0],
                            [240.0, 180.0, 30.0],
                            [40.0, 220.0, 90.0],
                        ][lit as usize]
                    } else {
                        [28.0, 30.0, 28.0]
                    };
                    return Some((class, c));
                }
                return None;
            }
            let cy = top + 0.45;
            match item.variant % 3 {
                0 => in_circle(s, y, 0.0, cy, 0.4).then(|| {
                    let ring = !in_circle(s, y, 0.0, cy, 0.31);
                    (class, if ring { c1 } else { c2 })
                }),
                1 => {
                    let ty = (y - top) / 0.8;
                    let inside = (0.0..1.0).contains(&ty) && fabsf(s) < 0.45 * (1.0 - ty);
                    inside.then(|| {
                        let inner = ty > 0.12 && fabsf(s) < 0.45 * (1.0 - ty) - 0.08;
                        (class, if inner { c2 } else { [200.0, 30.0, 30.0] })
                    })
                }
                _ => (fabsf(s) < 0.4 && (top + 0.1..h).contains(&y)).then(|| {
                    let border = fabsf(s) > 0.34 || y < top + 0.16 || y > h - 0.06;
                    (class, if border { c2 } else { c1 })
                }),
            }
        }
        Kind::Pedestrian => {
            let swing = 0.09 * sinf(item.phase);
            let hip = 0.5 * h;
            let shoulder = 0.82 * h;
            if in_circle(s, y, 0.0, h - 0.11, 0.105) {
                let hair = y > h - 0.09;
                return Some((class, if hair { [40.0, 30.0, 25.0] } else { c2 }));
            }
            if fabsf(s) < 0.05 && (shoulder..h - 0.18).contains(&y) {
                return Some((class, c2));
            }
            let torso_w = 0.19 - 0.05 * (shoulder - y).max(0.0) / (shoulder - hip);
            if fabsf(s) < torso_w && (hip - 0.05..shoulder).contains(&y) {
                return Some((class, c0));
            }
            let arm_x = fabsf(s) - 0.215;
            let arm_bottom = hip - 0.06 + swing * s.signum();
            if fabsf(arm_x) < 0.045 && (arm_bottom..shoulder - 0.03).contains(&y) {
                return Some((class, if y < arm_bottom + 0.08 { c2 } else { c0 }));
            }
            let leg = fabsf(fabsf(s) - 0.085) < 0.065;
            let lift = (swing * s.signum()).max(0.0);
            if leg && (lift..hip).contains(&y) {
                return Some((
                    class,
                    if y < lift + 0.07 {
                        [25.0, 22.0, 20.0]
                    } else {
                        c1
                    },
                ));
            }
            None
        }
        Kind::CarFace => {
            let half = item.half_w;
            let body_top = if item.variant == 1 { h * 0.5 } else { 0.95 };
            let wheel = fabsf(s) > half - 0.3 && fabsf(s) < half - 0.03 && y < 0.4;
            if wheel {
                return Some((class, [18.0, 18.0, 18.0]));
            }
            if y < 0.24 {
                return None;
            }
            let corner = (fabsf(s) - (half - 0.12)).max(0.0) + (0.34 - y).max(0.0);
            if y < body_top && fabsf(s) < half && corner < 0.12 {
                let light = fabsf(s) > half - 0.32
                    && fabsf(s) < half - 0.04
                    && fabsf(y - body_top + 0.22) < 0.09;
                let plate = fabsf(s) < 0.26 && (0.42..0.54).contains(&y);
                let bumper = y < 0.4;
                let c = if light {
                    c1
                } else if plate {
                    [225.0, 215.0, 120.0]
                } else if bumper {
                    scale(c0, 0.6)
                } else {
                    c0
                };
                return Some((class, c));
            }
            let frac = (y - body_top) / (h - body_top);
            let cabin_half = half * (0.93 - 0.2 * frac);
            if y >= body_top && y < h && fabsf(s) < cabin_half {
                let glass = fabsf(s) < cabin_half - 0.1 && y > body_top + 0.05 && y < h - 0.08;
                let c = if glass {
                    scale(c2, 0.8 + 0.5 * frac)
                } else {
                    scale(c0, 0.92)
                };
                return Some((class, c));
            }
            None
        }
        Kind::CarSide => {
            let len = item.z1 - item.z0;
            let along = if item.dir > 0.0 { s } else { len - s };
            let body_top = if item.variant == 1 { h * 0.5 } else { 0.95 };
            let r = 0.33;
            for cx in [0.8, len - 0.85] {
                if in_circle(along, y, cx, r, r) {
                    let hub = in_circle(along, y, cx, r, 0.14);
                    return Some((
                        class,
                        if hub {
                            [150.0, 150.0, 155.0]
                        } else {
                            [18.0, 18.0, 18.0]
                        },
                    ));
                }
            }
            if y < 0.24 || along < 0.0 || along > len {
                return None;
            }
            let end = along.min(len - along);
            if y < body_top && end + (body_top - y).min(0.15) > 0.12 {
                let door = fabsf(along - len * 0.52) < 0.015 || fabsf(along - len * 0.27) < 0.015;
                return Some((class, if door { scale(c0, 0.6) } else { c0 }));
            }
            let frac = (y - body_top) / (h - body_top);
            let (a, b) = if item.variant == 1 {
                (0.1 + 0.3 * frac, len - 0.1)
            } else {
                (len * 0.22 + len * 0.12 * frac, len * 0.8 - len * 0.1 * frac)
            };
            if y >= body_top && y < h && along > a && along < b {
                let glass =
                    y > body_top + 0.06 && y < h - 0.07 && along > a + 0.08 && along < b - 0.08;
                let pillar = fabsf(along - (a + b) / 2.0) < 0.05;
                let c = if glass && !pillar {
                    scale(c2, 1.0 + 0.4 * frac)
                } else {
                    scale(c0, 0.92)
                };
                return Some((class, c));
            }
            None
        }
        Kind::BikeFace => {
            let pedal = 0.12 * sinf(item.phase);
            if fabsf(s) < 0.035 && y < 0.7 {
                return Some((class, [20.0, 20.0, 20.0]));
            }
            if fabsf(s) < 0.3 && fabsf(y - 1.02) < 0.025 {
                return Some((class, [30.0, 30.0, 30.0]));
            }
            if in_circle(s, y, 0.0, 1.6, 0.12) {
                return Some((class, if y > 1.62 { c1 } else { c2 }));
            }
            if fabsf(s) < 0.2 - 0.04 * (1.45 - y) && (0.95..1.48).contains(&y) {
                return Some((class, c0));
            }
            for side in [-1.0f32, 1.0] {
                let foot = 0.35 + side * pedal;
                if fabsf(s - side * 0.12) < 0.06 && (foot..1.0).contains(&y) {
                    return Some((class, scale(c0, 0.6)));
                }
                if near_segment((s, y), (side * 0.2, 1.42), (side * 0.28, 1.03), 0.045) {
                    return Some((class, c0));
                }
            }
            None
        }
        Kind::BikeSide => {
            let a = s;
            let p = (a, y);
            for cx in [0.35, 1.4] {
                let d = sqrtf((a - cx) * (a - cx) + (y - 0.34) * (y - 0.34));
                if fabsf(d - 0.31) < 0.04 {
                    return Some((class, [20.0, 20.0, 20.0]));
                }
            }
            let frame = [
                ((0.35, 0.34), (0.8, 0.36)),
                ((0.8, 0.36), (0.7, 0.92)),
                ((0.7, 0.92), (1.25, 0.92)),
                ((0.8, 0.36), (1.25, 0.92)),
                ((1.25, 0.92), (1.4, 0.34)),
                ((1.25, 0.92), (1.3, 1.05)),
            ];
            if frame.iter().any(|&(u, v)| near_segment(p, u, v, 0.028)) {
                return Some((class, c1));
            }
            let pedal = (cosf(item.phase) * 0.16, sinf(item.phase) * 0.16);
            let foot = (0.8 + pedal.0, 0.36 + pedal.1);
            let knee = (0.98 + pedal.0 * 0.4, 0.78 + pedal.1 * 0.5);
            let body = [
                ((0.72, 1.0), (1.02, 1.42), 0.11),
                ((0.72, 1.0), knee, 0.075),
                (knee, foot, 0.06),
                ((1.02, 1.4), (1.3, 1.05), 0.045),
            ];
            if body.iter().any(|&(u, v, r)| near_segment(p, u, v, r)) {
                return Some((class, c0));
            }
            in_circle(a, y, 1.12, 1.58, 0.12).then_some((class, c2))
        }
        Kind::Clutter => {
            let w = item.half_w;
            let lid = y > h - 0.08 && fabsf(s) < w + 0.03;
            (lid || (fabsf(s) < w * (0.9 + 0.1 * y / h) && y < h)).then(|| {
                let c = if lid {
                    c1
                } else {
                    scale(c0, 0.9 + 0.2 * value_noise(s * 8.0, y * 8.0, tex))
                };
                (class, c)
            })
        }
    }
}

/// The ground (road, markings, kerb, pavement, verge) at world position `(x, z)`.
fn ground(style: &Style, x: f32, z: f32) -> (Class, Rgb) {
    let tex = style.tex_seed;
    let ax = fabsf(x);
    if ax < style.road_half {
        let grain =
            0.82 + 0.3 * fbm(x * 3.0, z * 1.5, tex) + 0.1 * value_noise(x * 0.3, z * 0.1, tex ^ 9);
        let mut c = scale(style.asphalt, grain);
        let dash = z - floorf(z / 9.0) * 9.0 < 3.0;
        let lane_edge = style.lanes_per_side == 2 && fabsf(ax - style.lane_w) < 0.06 && dash;
        let wear = 0.75 + 0.25 * value_noise(x * 10.0, z * 2.0, tex ^ 3);
        if (ax < 0.07 && dash) || lane_edge {
            c = scale(style.centre_line, wear);
        } else if fabsf(ax - (style.road_half - style.parking - 0.15)) < 0.06 && style.parking > 1.0
        {
            c = scale([225.0, 225.0, 220.0], wear);
        } else if fabsf(ax - (style.road_half - 0.25)) < 0.05 {
            c = scale([215.0, 190.0, 60.0], wear);
        }
        (Class::Road, c)
    } else if ax < style.road_half + style.pave_w {
        let d = ax - style.road_half;
        if d < 0.18 {
            return (Class::Pavement, scale(style.pavement, 1.08));
        }
        let (tu, tz) = (d * 1.6, z * 1.6);
        let joint = tu - floorf(tu) < 0.05 || tz - floorf(tz) < 0.05;
        let g = 0.9
            + 0.15 * value_noise(floorf(tu) * 3.1, floorf(tz) * 1.7, tex)
            + 0.05 * fbm(x * 6.0, z * 6.0, tex);
        (
            Class::Pavement,
            scale(style.pavement, if joint { g * 0.8 } else { g }),
        )
    } else {
        let g = 0.75 + 0.5 * fbm(x * 2.0, z * 2.0, tex ^ 11);
        (Class::Tree, scale(style.grass, g))
    }
}

fn sky(style: &Style, dx: f32, dy: f32) -> Hit {
    let tex = style.tex_seed;
    // A distant skyline just above the horizon, cut into blocks.
    let block = floorf(dx * 14.0 + (tex % 97) as f32);
    let skyline =
        0.012 + 0.05 * value_noise(block * 0.9, 0.5, tex ^ 21) * value_noise(block * 0.3, 2.5, tex);
    if dy < skyline {
        let trees = value_noise(block * 0.45, 7.5, tex) > 0.62;
        let (class, base) = if trees {
            (Class::Tree, scale(style.grass, 0.7))
        } else {
            (Class::Building, [150.0, 145.0, 140.0])
        };
        return Hit {
            class,
            color: mix(base, style.sky_horizon, 0.55),
            dist: MAX_DEPTH * 3.0,
        };
    }
    let e = (dy * 2.0).clamp(0.0, 1.0);
    let mut c = mix(style.sky_horizon, style.sky_top, sqrtf(e));
    if style.clouds > 0.0 {
        let inv = 1.0 / (dy + 0.05);
        let n = fbm(dx * inv * 1.5, inv * 3.0, tex ^ 31);
        let cloud = ((n - (1.0 - style.clouds)) * 3.0).clamp(0.0, 1.0);
        c = mix(c, [238.0, 238.0, 240.0], cloud * 0.85);
    }
    Hit {
        class: Class::Sky,
        color: c,
        dist: f32::INFINITY,
    }
}

fn trace(style: &Style, view: &View, cam: &Camera, u: f32, v: f32) -> Hit {
    let dx = (u - cam.cx) / cam.f;
    let dy = (cam.v_horizon - v) / cam.f;
    let mut best = Hit {
        class: Class::Sky,
        color: [0.0; 3],
        dist: f32::INFINITY,
    };
    if dy < 0.0 {
        let t = cam.cam_h / -dy;
        let (x, z) = (t * dx, t);
        let (class, mut color) = ground(style, x + style.cam_x, z + view.z_cam);
        for sh in &view.shadows {
            if x > sh[0] && x < sh[1] && z > sh[2] && z < sh[3] {
                let edge = (x - sh[0]).min(sh[1] - x).min(z - sh[2]).min(sh[3] - z);
                color = scale(color, 1.0 - 0.55 * (edge * 6.0).min(1.0));
                break;
            }
        }
        best = Hit {
            class,
            color,
            dist: sqrtf(t * t * (1.0 + dx * dx)),
        };
    }
    for item in &view.items {
        let b = &item.bbox;
        if u < b[0] || u > b[2] || v < b[1] || v > b[3] {
            continue;
        }
        let (t, s) = if item.side {
            if fabsf(dx) < 1e-6 {
                continue;
            }
            let t = item.x / dx;
            (t, t - item.z0)
        } else {
            (item.z0, item.z0 * dx - item.x)
        };
        if t <= 0.0 || t >= best.dist || (item.side && (s < 0.0 || t > item.z1)) {
            continue;
        }
        let y = cam.cam_h + t * dy;
        if y < 0.0 {
            continue;
        }
        if let Some((class, mut color)) = surface(item, s, y, style.tex_seed) {
            if item.kind == Kind::Facade {
                color = scale(
                    color,
                    if item.dir < 0.0 {
                        style.sun_left
                    } else {
                        style.sun_right
                    },
                );
            }
            best = Hit {
                class,
                color,
                dist: t,
            };
        }
    }
    if best.dist == f32::INFINITY {
        sky(style, dx, dy)
    } else {
        best
    }
}

/// Renders `view` into interleaved RGB8 and class-id buffers of `cam`'s size.
pub(crate) fn render(
    style: &Style,
    view: &mut View,
    cam: &Camera,
    seed: u64,
    rgb: &mut [u8],
    labels: &mut [u8],
) {
    for item in view.items.iter_mut() {
        item.bbox = cam.bbox(item);
    }
    let light = [
        style.light * style.tint[0],
        style.light * style.tint[1],
        style.light * style.tint[2],
    ];
    for py in 0..cam.height {
        for px in 0..cam.width {
            let (u, v) = cam.level(px, py);
            let hit = trace(style, view, cam, u, v);
            let mut c = hit.color;
            if hit.class != Class::Sky {
                let fog = 1.0 - expf(-hit.dist.min(1e4) / style.visibility);
                c = mix(c, style.sky_horizon, fog);
            }
            let i = py * cam.width + px;
            labels[i] = hit.class.id();
            for ch in 0..3 {
                let n = (pixel_noise(px as u32, py as u32, seed.wrapping_add(ch as u64)) - 0.5)
                    * style.noise;
                rgb[3 * i + ch] = (c[ch] * light[ch] + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
}
