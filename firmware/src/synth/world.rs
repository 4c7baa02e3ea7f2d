//! The synthetic world: a straight street described as a pure function of a seed.
//!
//! The street is cut into segments along the driving direction. What stands in a
//! segment (buildings, trees, poles, parked cars, ...) depends only on the seed and
//! the segment index, so a camera anywhere on the street sees the same world
//! without storing it. Moving things (traffic, cyclists, walkers) live in streams
//! that move at one speed each: in the stream's own moving frame they are static
//! and are generated the same way, which keeps their motion coherent across frames.
//!
//! Units are metres; `x` is lateral (positive to the right), `z` forward, `y` up.
//! Traffic keeps to the left, as in the Cambridge streets of CamVid.

use heapless::Vec;

use crate::classes::Class;
use crate::rng::Rng;

/// An RGB colour in `0.0..=255.0`.
pub(crate) type Rgb = [f32; 3];

/// How far the camera sees objects, in metres.
pub(crate) const MAX_DEPTH: f32 = 110.0;
/// Objects closer than this are clipped.
pub(crate) const NEAR: f32 = 0.9;
/// The most items one view holds; further ones are dropped, far ones first.
pub(crate) const MAX_ITEMS: usize = 320;
/// The most cast shadows one view holds.
pub(crate) const MAX_SHADOWS: usize = 48;

const STATIC_SEGMENT: f32 = 12.0;

/// Appearance and geometry shared by every frame of one scene or drive.
#[derive(Clone, Debug)]
pub(crate) struct Style {
    pub lane_w: f32,
    pub lanes_per_side: u32,
    pub parking: f32,
    pub road_half: f32,
    pub pave_w: f32,
    pub cam_h: f32,
    pub cam_x: f32,
    pub focal: f32,
    pub horizon: f32,
    pub pitch: f32,
    pub roll: f32,
    pub light: f32,
    pub tint: Rgb,
    pub sun_left: f32,
    pub sun_right: f32,
    pub sky_top: Rgb,
    pub sky_horizon: Rgb,
    pub clouds: f32,
    pub visibility: f32,
    pub asphalt: Rgb,
    pub pavement: Rgb,
    pub grass: Rgb,
    pub centre_line: Rgb,
    pub noise: f32,
    pub density: f32,
    pub speed: f32,
    pub oncoming_speed: f32,
    pub bike_speed: f32,
    pub tex_seed: u32,
}

fn jpick(rng: &mut Rng, palette: &[Rgb], amount: f32) -> Rgb {
    let c = rng.pick(palette);
    jitter(rng, c, amount)
}

fn jitter(rng: &mut Rng, c: Rgb, amount: f32) -> Rgb {
    [
        c[0] * rng.range(1.0 - amount, 1.0 + amount),
        c[1] * rng.range(1.0 - amount, 1.0 + amount),
        c[2] * rng.range(1.0 - amount, 1.0 + amount),
    ]
}

impl Style {
    pub(crate) fn random(rng: &mut Rng) -> Style {
        let lanes_per_side = if rng.chance(0.3) { 2 } else { 1 };
        let lane_w = rng.range(3.0, 3.7);
        let parking = if rng.chance(0.6) {
            rng.range(2.0, 2.5)
        } else {
            0.4
        };
        let road_half = lane_w * lanes_per_side as f32 + parking;
        let overcast = rng.chance(0.35);
        let light = rng.range(0.6, 1.2);
        let warm = rng.range(-0.08, 0.08);
        let sky_top = if overcast {
            jitter(rng, [165.0, 170.0, 178.0], 0.06)
        } else {
            jitter(rng, [70.0, 125.0, 200.0], 0.12)
        };
        let sky_horizon = if overcast {
            jitter(rng, [205.0, 208.0, 212.0], 0.04)
        } else {
            jitter(rng, [185.0, 205.0, 228.0], 0.06)
        };
        let sun = rng.range(0.65, 1.0);
        let (sun_left, sun_right) = if rng.chance(0.5) {
            (1.0, sun)
        } else {
            (sun, 1.0)
        };
        let asphalt_grey = rng.range(75.0, 120.0);
        let pave_grey = rng.range(135.0, 185.0);
        Style {
            lane_w,
            lanes_per_side,
            parking,
            road_half,
            pave_w: rng.range(2.0, 4.0),
            cam_h: rng.range(1.25, 1.7),
            cam_x: -road_half + parking + lane_w * rng.range(0.4, 0.6),
            focal: rng.range(0.75, 1.0),
            horizon: rng.range(0.38, 0.5),
            pitch: rng.range(-0.03, 0.03),
            roll: rng.range(-0.04, 0.04),
            light,
            tint: [1.0 + warm, 1.0, 1.0 - warm],
            sun_left,
            sun_right,
            sky_top,
            sky_horizon,
            clouds: if overcast {
                rng.range(0.1, 0.3)
            } else {
                rng.range(0.0, 0.6)
            },
            visibility: rng.range(120.0, 400.0),
            asphalt: jitter(rng, [asphalt_grey, asphalt_grey, asphalt_grey * 1.04], 0.04),
            pavement: jitter(rng, [pave_grey, pave_grey * 0.97, pave_grey * 0.92], 0.05),
            grass: jitter(rng, [70.0, 110.0, 45.0], 0.15),
            centre_line: if rng.chance(0.25) {
                [220.0, 190.0, 60.0]
            } else {
                [225.0, 225.0, 220.0]
            },
            noise: rng.range(2.0, 12.0),
            density: rng.range(0.6, 1.0),
            speed: rng.range(6.0, 12.0),
            oncoming_speed: rng.range(8.0, 14.0),
            bike_speed: rng.range(3.5, 6.0),
            tex_seed: rng.next_u64() as u32,
        }
    }
}

/// What an item is; decides its outline and colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Facade,
    FacadeEnd,
    Fence,
    Tree,
    Pole,
    Lamp,
    Sign,
    TrafficLight,
    Pedestrian,
    CarFace,
    CarSide,
    BikeFace,
    BikeSide,
    Clutter,
}

/// One flat piece of the world, relative to the camera.
///
/// A *face* stands across the view at depth `z0` and spans `x ± half_w`; a *side*
/// runs along the street at lateral position `x` from depth `z0` to `z1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub kind: Kind,
    pub side: bool,
    pub x: f32,
    pub z0: f32,
    pub z1: f32,
    pub half_w: f32,
    pub h: f32,
    /// Which way the local horizontal axis runs (+1 or -1), for asymmetric outlines.
    pub dir: f32,
    pub colors: [Rgb; 3],
    pub variant: u32,
    pub phase: f32,
    /// World depth of `z0`, so textures stay attached to the world as the camera moves.
    pub tex_z: f32,
    /// Screen bounds in camera-level pixels: u0, v0, u1, v1.
    pub bbox: [f32; 4],
}

/// A rectangle on the ground darkened by a car: x0, x1, z0, z1 relative to the camera.
pub(crate) type Shadow = [f32; 4];

/// Everything one frame shows, placed relative to the camera.
#[derive(Debug)]
pub(crate) struct View {
    pub items: Vec<Item, MAX_ITEMS>,
    pub shadows: Vec<Shadow, MAX_SHADOWS>,
    pub z_cam: f32,
}

const CAR_COLORS: [Rgb; 10] = [
    [235.0, 235.0, 235.0],
    [25.0, 25.0, 30.0],
    [165.0, 168.0, 172.0],
    [110.0, 112.0, 118.0],
    [170.0, 25.0, 30.0],
    [30.0, 55.0, 140.0],
    [30.0, 80.0, 50.0],
    [200.0, 170.0, 40.0],
    [90.0, 30.0, 35.0],
    [60.0, 110.0, 160.0],
];
const CLOTHES: [Rgb; 9] = [
    [30.0, 30.0, 35.0],
    [40.0, 50.0, 90.0],
    [120.0, 30.0, 35.0],
    [200.0, 200.0, 195.0],
    [90.0, 90.0, 95.0],
    [150.0, 110.0, 60.0],
    [50.0, 90.0, 60.0],
    [200.0, 120.0, 40.0],
    [60.0, 70.0, 120.0],
];
const SKIN: [Rgb; 4] = [
    [225.0, 185.0, 160.0],
    [190.0, 140.0, 105.0],
    [140.0, 95.0, 65.0],
    [90.0, 60.0, 45.0],
];
const WALLS: [Rgb; 8] = [
    [160.0, 75.0, 55.0],
    [185.0, 165.0, 130.0],
    [210.0, 205.0, 195.0],
    [130.0, 120.0, 110.0],
    [175.0, 120.0, 80.0],
    [95.0, 90.0, 90.0],
    [200.0, 185.0, 150.0],
    [140.0, 60.0, 50.0],
];

/// Collects the items of one view, converting world to camera coordinates.
struct Builder<'a> {
    view: View,
    style: &'a Style,
    x_cam: f32,
    z_cam: f32,
}

impl Builder<'_> {
    fn push(&mut self, mut item: Item, world_x: f32, world_z0: f32) {
        item.x = world_x - self.x_cam;
        let len = item.z1 - item.z0;
        item.tex_z = world_z0;
        item.z0 = world_z0 - self.z_cam;
        item.z1 = item.z0 + len;
        let visible = if item.side {
            item.z1 > NEAR && item.z0 < MAX_DEPTH
        } else {
            item.z0 > NEAR && item.z0 < MAX_DEPTH
        };
        if visible {
            // A full list drops this item; segments are visited near to far.
            let _ = self.view.items.push(item);
        }
    }

    fn shadow(&mut self, world_x: f32, half_w: f32, world_z0: f32, len: f32) {
        let z0 = world_z0 - self.z_cam;
        if z0 + len > 0.0 && z0 < MAX_DEPTH {
            let x = world_x - self.x_cam;
            let _ = self
                .view
                .shadows
                .push([x - half_w, x + half_w, z0, z0 + len]);
        }
    }

    fn face(kind: Kind, half_w: f32, h: f32, colors: [Rgb; 3], rng: &mut Rng) -> Item {
        Item {
            kind,
            side: false,
            x: 0.0,
            z0: 0.0,
            z1: 0.0,
            half_w,
            h,
            dir: 1.0,
            colors,
            variant: rng.next_u64() as u32,
            phase: rng.range(0.0, core::f32::consts::TAU),
            tex_z: 0.0,
            bbox: [0.0; 4],
        }
    }

    fn side(kind: Kind, len: f32, h: f32, colors: [Rgb; 3], rng: &mut Rng) -> Item {
        let mut item = Self::face(kind, 0.0, h, colors, rng);
        item.side = true;
        item.z1 = len;
        item
    }

    /// A car seen from behind (or the front, for oncoming ones) and its near side.
    fn car(&mut self, world_x: f32, world_z: f32, oncoming: bool, rng: &mut Rng) {
        let van = rng.chance(0.15);
        let w = if van {
            rng.range(1.9, 2.05)
        } else {
            rng.range(1.65, 1.9)
        };
        let h = if van {
            rng.range(1.9, 2.3)
        } else {
            rng.range(1.35, 1.55)
        };
        let len = if van {
            rng.range(4.8, 5.5)
        } else {
            rng.range(3.8, 4.7)
        };
        let body = jpick(rng, &CAR_COLORS, 0.06);
        let lights = if oncoming {
            [235.0, 230.0, 200.0]
        } else {
            [200.0, 25.0, 25.0]
        };
        let colors = [body, lights, [20.0, 24.0, 30.0]];
        let mut face = Self::face(Kind::CarFace, w / 2.0, h, colors, rng);
        face.variant = van as u32;
        self.push(face, world_x, world_z);
        // The side facing the camera, between the camera and the car's centre line.
        let near_side = if world_x > self.x_cam {
            world_x - w / 2.0
        } else {
            world_x + w / 2.0
        };
        let mut side = Self::side(Kind::CarSide, len, h, colors, rng);
        side.variant = van as u32;
        side.dir = if oncoming { -1.0 } else { 1.0 };
        self.push(side, near_side, world_z);
        self.shadow(world_x, w / 2.0 + 0.1, world_z - 0.15, len + 0.3);
    }

    fn pedestrian(&mut self, world_x: f32, world_z: f32, walking: bool, rng: &mut Rng) {
        let h = rng.range(1.5, 1.92);
        let colors = [
            jpick(rng, &CLOTHES, 0.1),
            jpick(rng, &CLOTHES, 0.1),
            rng.pick(&SKIN),
        ];
        let mut item = Self::face(Kind::Pedestrian, 0.3, h, colors, rng);
        if !walking {
            item.phase = 0.0;
        }
        self.push(item, world_x, world_z);
    }

    fn bicyclist(&mut self, world_x: f32, world_z: f32, t: f32, rng: &mut Rng) {
        if world_z - self.z_cam < 4.0 {
            return;
        }
        let colors = [
            jpick(rng, &CLOTHES, 0.1),
            jpick(rng, &CAR_COLORS, 0.1),
            rng.pick(&SKIN),
        ];
        let mut face = Self::face(Kind::BikeFace, 0.34, 1.75, colors, rng);
        face.phase += t * 5.0;
        self.push(face, world_x, world_z);
        let near_side = if world_x > self.x_cam {
            world_x - 0.05
        } else {
            world_x + 0.05
        };
        let mut side = Self::side(Kind::BikeSide, 1.75, 1.75, colors, rng);
        side.phase = face.phase;
        self.push(side, near_side, world_z);
    }

    /// The static content of one side of one street segment.
    fn static_segment(&mut self, seed: u64, k: i64, side: f32) {
        let style = self.style;
        let mut rng = Rng::for_cell(seed, if side < 0.0 { 1 } else { 2 }, k);
        let z_start = k as f32 * STATIC_SEGMENT;
        let kerb = side * style.road_half;
        let back = side * (style.road_half + style.pave_w);
        let d = style.density;

        // Behind the pavement: a building, or an open plot with trees and a fence.
        if rng.chance(0.62 * d + 0.1) {
            let setback = if rng.chance(0.7) {
                0.0
            } else {
                rng.range(0.5, 4.0)
            };
            let z0 = z_start + rng.range(0.0, 2.5);
            let z1 = z_start + STATIC_SEGMENT - rng.range(0.0, 2.5);
            let h = rng.range(5.0, 22.0);
            let wall = jpick(&mut rng, &WALLS, 0.08);
            let window = jitter(&mut rng, [55.0, 70.0, 85.0], 0.2);
            let trim = jitter(&mut rng, [215.0, 210.0, 200.0], 0.05);
            let x = back + side * setback;
            let mut facade = Self::side(Kind::Facade, z1 - z0, h, [wall, window, trim], &mut rng);
            facade.dir = side;
            self.push(facade, x, z0);
            let mut end = Self::face(Kind::FacadeEnd, 9.0, h, [wall, window, trim], &mut rng);
            end.dir = side;
            end.variant = facade.variant;
            self.push(end, x + side * 9.0, z0);
        } else {
            if rng.chance(0.55) {
                let len = rng.range(6.0, STATIC_SEGMENT);
                let colors = if rng.chance(0.5) {
                    [[120.0, 85.0, 55.0], [95.0, 65.0, 40.0], [0.0; 3]]
                } else {
                    [[95.0, 100.0, 100.0], [60.0, 65.0, 65.0], [0.0; 3]]
                };
                let h = rng.range(1.0, 1.8);
                let fence = Self::side(Kind::Fence, len, h, colors, &mut rng);
                self.push(
                    fence,
                    back + side * 0.2,
                    z_start + rng.range(0.0, STATIC_SEGMENT - len),
                );
            }
            for _ in 0..1 + rng.below(3) {
                self.tree(
                    back + side * rng.range(1.0, 6.0),
                    z_start + rng.range(0.0, STATIC_SEGMENT),
                    &mut rng,
                );
            }
        }

        // Street furniture on the pavement.
        if rng.chance(0.6) {
            let h = rng.range(6.0, 9.0);
            let grey = jitter(&mut rng, [95.0, 98.0, 100.0], 0.15);
            let mut lamp = Self::face(
                Kind::Lamp,
                1.6,
                h,
                [grey, [240.0, 235.0, 210.0], grey],
                &mut rng,
            );
            lamp.dir = -side;
            self.push(
                lamp,
                kerb + side * 0.5,
                z_start + rng.range(0.0, STATIC_SEGMENT),
            );
        }
        if rng.chance(0.3) {
            let grey = jitter(&mut rng, [80.0, 78.0, 72.0], 0.2);
            let pole = Self::face(
                Kind::Pole,
                0.1,
                rng.range(3.0, 8.0),
                [grey, grey, grey],
                &mut rng,
            );
            self.push(
                pole,
                kerb + side * rng.range(0.3, 0.8),
                z_start + rng.range(0.0, STATIC_SEGMENT),
            );
        }
        if rng.chance(0.45) {
            let colors = [
                [100.0, 102.0, 105.0],
                rng.pick(&[
                    [200.0, 30.0, 30.0],
                    [30.0, 70.0, 170.0],
                    [230.0, 190.0, 40.0],
                ]),
                [240.0, 240.0, 240.0],
            ];
            let traffic_light = rng.chance(0.3);
            let kind = if traffic_light {
                Kind::TrafficLight
            } else {
                Kind::Sign
            };
            let h = rng.range(2.4, 3.4);
            let sign = Self::face(kind, 0.45, h, colors, &mut rng);
            self.push(
                sign,
                kerb + side * rng.range(0.3, 0.9),
                z_start + rng.range(0.0, STATIC_SEGMENT),
            );
        }
        if rng.chance(0.25) {
            self.tree(
                kerb + side * rng.range(0.6, 1.2),
                z_start + rng.range(0.0, STATIC_SEGMENT),
                &mut rng,
            );
        }
        if rng.chance(0.2) {
            let colors = [
                rng.pick(&[
                    [40.0, 70.0, 45.0],
                    [35.0, 35.0, 38.0],
                    [200.0, 110.0, 30.0],
                    [120.0, 120.0, 125.0],
                ]),
                [30.0, 30.0, 30.0],
                [0.0; 3],
            ];
            let w = rng.range(0.25, 0.45);
            let bin = Self::face(Kind::Clutter, w, rng.range(0.7, 1.2), colors, &mut rng);
            self.push(
                bin,
                back - side * rng.range(0.4, 1.0),
                z_start + rng.range(0.0, STATIC_SEGMENT),
            );
        }
        for _ in 0..rng.below(3) {
            if rng.chance(0.45 * d) {
                let x = side * (style.road_half + rng.range(0.4, style.pave_w - 0.3));
                self.pedestrian(x, z_start + rng.range(0.0, STATIC_SEGMENT), false, &mut rng);
            }
        }
        // Parked cars in the parking strip.
        if style.parking > 1.5 && rng.chance(0.4) {
            let x = side * (style.road_half - style.parking / 2.0 - 0.1);
            self.car(x, z_start + rng.range(0.0, 6.0), side > 0.0, &mut rng);
        }
    }

    fn tree(&mut self, world_x: f32, world_z: f32, rng: &mut Rng) {
        let r = rng.range(1.2, 3.0);
        let trunk_h = rng.range(1.5, 3.5);
        let colors = [
            jitter(rng, [55.0, 95.0, 40.0], 0.2),
            jitter(rng, [90.0, 70.0, 50.0], 0.15),
            [0.0; 3],
        ];
        let mut tree = Self::face(Kind::Tree, r * 1.3, trunk_h + 2.2 * r, colors, rng);
        tree.phase = r;
        self.push(tree, world_x, world_z);
    }

    /// Objects that all move at `speed` along the street: generated in their own
    /// frame, in cells of `cell` metres, then moved to time `t`.
    fn stream(
        &mut self,
        seed: u64,
        id: u64,
        speed: f32,
        t: f32,
        cell: f32,
        mut place: impl FnMut(&mut Self, &mut Rng, f32),
    ) {
        let shift = speed * t;
        let first = libm::floorf((self.z_cam - shift - 8.0) / cell) as i64;
        let last = libm::floorf((self.z_cam - shift + MAX_DEPTH) / cell) as i64;
        for k in first..=last {
            let mut rng = Rng::for_cell(seed, id, k);
            let z = k as f32 * cell + rng.range(0.0, cell) + shift;
            place(self, &mut rng, z);
        }
    }
}

/// The view of the street from camera depth `z_cam` at time `t` seconds.
pub(crate) fn build_view(style: &Style, seed: u64, z_cam: f32, t: f32) -> View {
    let mut b = Builder {
        view: View {
            items: Vec::new(),
            shadows: Vec::new(),
            z_cam,
        },
        style,
        x_cam: style.cam_x,
        z_cam,
    };
    let first = libm::floorf((z_cam - STATIC_SEGMENT) / STATIC_SEGMENT) as i64;
    let last = libm::floorf((z_cam + MAX_DEPTH) / STATIC_SEGMENT) as i64;
    for k in first..=last {
        b.static_segment(seed, k, -1.0);
        b.static_segment(seed, k, 1.0);
    }
    let lane0 = -style.road_half + style.parking + style.lane_w / 2.0;
    let d = style.density;
    // Traffic in the camera's lane keeps pace with the camera at a safe distance.
    let mut rng = Rng::for_cell(seed, 10, 0);
    if rng.chance(0.6 * d) {
        let gap = rng.range(9.0, 30.0) + 3.0 * libm::sinf(0.15 * t + rng.range(0.0, 6.0));
        b.car(
            style.cam_x + rng.range(-0.3, 0.3),
            z_cam + gap,
            false,
            &mut rng,
        );
    }
    // A second lane in our direction, a little faster than us.
    if style.lanes_per_side == 2 {
        let x = lane0 + style.lane_w;
        let x = if libm::fabsf(x - style.cam_x) < 1.0 {
            lane0
        } else {
            x
        };
        b.stream(seed, 11, style.speed * 1.25, t, 26.0, |b, rng, z| {
            if rng.chance(0.6 * d) {
                b.car(x + rng.range(-0.3, 0.3), z, false, rng);
            }
        });
    }
    // Oncoming traffic on the other side of the centre line.
    let oncoming_lanes = style.lanes_per_side;
    b.stream(seed, 12, -style.oncoming_speed, t, 18.0, |b, rng, z| {
        if rng.chance(0.55 * d) {
            let lane = rng.below(oncoming_lanes) as f32;
            let x = style.lane_w * (lane + 0.5) + rng.range(-0.3, 0.3);
            b.car(x, z, true, rng);
        }
    });
    // Cyclists along the kerb of our side.
    let bike_x = -style.road_half + style.parking + 0.6;
    b.stream(seed, 13, style.bike_speed, t, 35.0, |b, rng, z| {
        if rng.chance(0.55) {
            b.bicyclist(bike_x + rng.range(-0.2, 0.3), z, t, rng);
        }
    });
    // Walkers on both pavements, in both directions; some cross the road.
    for (id, side, dir) in [
        (14, -1.0f32, 1.0f32),
        (15, -1.0, -1.0),
        (16, 1.0, 1.0),
        (17, 1.0, -1.0),
    ] {
        b.stream(seed, id, 1.3 * dir, t, 14.0, |b, rng, z| {
            if rng.chance(0.5 * d) {
                let x = side * (style.road_half + rng.range(0.4, style.pave_w - 0.3));
                b.pedestrian(x, z, true, rng);
            }
        });
    }
    let mut rng = Rng::for_cell(seed, 18, libm::floorf(z_cam / 40.0) as i64);
    if rng.chance(0.2) {
        let x = rng.range(-style.road_half, style.road_half);
        b.pedestrian(x, z_cam + rng.range(8.0, 30.0), true, &mut rng);
    }
    b.view
}

impl Kind {
    /// The class of the item's main body (parts such as sign poles may differ).
    pub(crate) fn class(self) -> Class {
        match self {
            Kind::Facade | Kind::FacadeEnd => Class::Building,
            Kind::Fence => Class::Fence,
            Kind::Tree => Class::Tree,
            Kind::Pole | Kind::Lamp => Class::Pole,
            Kind::Sign | Kind::TrafficLight => Class::SignSymbol,
            Kind::Pedestrian => Class::Pedestrian,
            Kind::CarFace | Kind::CarSide => Class::Car,
            Kind::BikeFace | Kind::BikeSide => Class::Bicyclist,
            Kind::Clutter => Class::Void,
        }
    }
}
