//! Where training and evaluation run: `--device cpu|wgpu[:N]|vulkan[:N]|cuda[:N]|rocm[:N]`,
//! several separated by commas for data parallel training.
//!
//! The CPU is burn-flex, with edgeseg's fused loss and Adam (`crate::loss`,
//! `crate::optim`) and the patched GEMM convolution gradients. The others are
//! Burn's CubeCL backends, each behind the cargo feature of the same name so
//! the default build stays CPU-only; there the loss is composed from tensor
//! operations and the optimisers are Burn's own, so nothing leaves the device
//! between steps. Checkpoints are the same on every device: a run started on
//! one resumes on another.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;

use crate::error::ParseError;

/// The backends `--device` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// burn-flex on the CPU (always built).
    #[default]
    Cpu,
    /// wgpu on whatever graphics API the machine has (feature `wgpu`).
    Wgpu,
    /// wgpu pinned to Vulkan (feature `vulkan`).
    Vulkan,
    /// NVIDIA CUDA (feature `cuda`).
    Cuda,
    /// AMD ROCm/HIP (feature `rocm`).
    Rocm,
}

impl Backend {
    /// The name `--device` and the cargo feature use.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
        }
    }

    /// Whether this build has the backend.
    pub fn built(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
            Backend::Cuda => cfg!(feature = "cuda"),
            Backend::Rocm => cfg!(feature = "rocm"),
        }
    }
}

/// Which adapter of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Adapter {
    /// The backend's default: the first GPU, or wgpu's preferred adapter.
    #[default]
    Default,
    /// GPU number N (for wgpu and Vulkan: the N-th discrete GPU).
    Index(usize),
    /// wgpu/Vulkan only: a software adapter that runs on the CPU, such as
    /// Mesa's lavapipe (what CI tests the GPU path on).
    Cpu,
}

/// One device, as `--device` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: Backend,
    /// The adapter of the backend.
    pub adapter: Adapter,
}

/// A device this build or this machine cannot give.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The backend's cargo feature was not enabled when edgeseg was built.
    #[error(
        "--device {device}: this edgeseg was built without the `{feature}` feature; \
         rebuild with `cargo build --release -p host --features {feature}`"
    )]
    NotBuilt {
        /// The device asked for.
        device: DeviceSpec,
        /// The cargo feature that brings its backend.
        feature: &'static str,
    },
}

impl DeviceSpec {
    /// burn-flex on the CPU.
    pub const CPU: DeviceSpec = DeviceSpec {
        backend: Backend::Cpu,
        adapter: Adapter::Default,
    };

    /// Whether this is the CPU, where the fused loss and Adam run.
    pub fn is_cpu(&self) -> bool {
        self.backend == Backend::Cpu
    }

    /// The Burn device (without autodiff), or why this build has none.
    pub fn device(&self) -> Result<Device, DeviceError> {
        let not_built = || DeviceError::NotBuilt {
            device: *self,
            feature: self.backend.name(),
        };
        if !self.backend.built() {
            return Err(not_built());
        }
        #[cfg(any(feature = "wgpu", feature = "vulkan"))]
        let kind = || match self.adapter {
            Adapter::Default => burn::tensor::DeviceKind::DefaultDevice,
            Adapter::Index(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
            Adapter::Cpu => burn::tensor::DeviceKind::Cpu,
        };
        #[cfg(any(feature = "cuda", feature = "rocm"))]
        let index = match self.adapter {
            Adapter::Index(i) => i,
            _ => 0,
        };
        Ok(match self.backend {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(kind()),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Device::vulkan(kind()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(index),
            #[cfg(feature = "rocm")]
            Backend::Rocm => Device::rocm(index),
            #[allow(unreachable_patterns)] // every backend this build lacks
            _ => return Err(not_built()),
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.backend.name())?;
        match self.adapter {
            Adapter::Default => Ok(()),
            Adapter::Index(i) => write!(f, ":{i}"),
            Adapter::Cpu => f.write_str(":cpu"),
        }
    }
}

const EXPECTED: &str = "cpu, wgpu, vulkan, cuda or rocm, optionally with :N (a GPU number) \
                        or, for wgpu and vulkan, :cpu (a software adapter such as lavapipe)";

impl FromStr for DeviceSpec {
    type Err = ParseError;

    /// `cpu`, `wgpu`, `wgpu:1`, `vulkan:cpu`, `cuda:0`, ...
    fn from_str(s: &str) -> Result<DeviceSpec, ParseError> {
        let bad = || ParseError {
            expected: EXPECTED,
            given: s.into(),
        };
        let (name, adapter) = match s.split_once(':') {
            Some((name, adapter)) => (name, Some(adapter)),
            None => (s, None),
        };
        let backend = match name {
            "cpu" => Backend::Cpu,
            "wgpu" => Backend::Wgpu,
            "vulkan" => Backend::Vulkan,
            "cuda" => Backend::Cuda,
            "rocm" => Backend::Rocm,
            _ => return Err(bad()),
        };
        let adapter = match adapter {
            None => Adapter::Default,
            Some("cpu") if matches!(backend, Backend::Wgpu | Backend::Vulkan) => Adapter::Cpu,
            Some(n) if backend != Backend::Cpu => Adapter::Index(n.parse().map_err(|_| bad())?),
            Some(_) => return Err(bad()),
        };
        Ok(DeviceSpec { backend, adapter })
    }
}

/// The devices of a run, as `--device` names them: one, or several separated
/// by commas for data parallel training (`crate::parallel`); the first holds
/// the model, the optimiser and evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Devices(Vec<DeviceSpec>);

impl Devices {
    /// Every device, the main one first.
    pub fn all(&self) -> &[DeviceSpec] {
        &self.0
    }
}

impl Default for Devices {
    fn default() -> Devices {
        Devices(vec![DeviceSpec::CPU])
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, device) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{device}")?;
        }
        Ok(())
    }
}

impl FromStr for Devices {
    type Err = ParseError;

    /// `cpu`, `cuda:0,cuda:1`, `wgpu:cpu,wgpu`: each device once.
    fn from_str(s: &str) -> Result<Devices, ParseError> {
        let devices = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<DeviceSpec>, _>>()?;
        for (i, device) in devices.iter().enumerate() {
            if devices[..i].contains(device) {
                return Err(ParseError {
                    expected: "each device at most once (data parallel needs distinct devices)",
                    given: s.into(),
                });
            }
        }
        Ok(Devices(devices))
    }
}

/// Whether Mesa's lavapipe (a Vulkan on the CPU, `wgpu:cpu`) is installed;
/// CI must have it (`.ci/run` installs mesa-vulkan-drivers).
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn lavapipe() -> bool {
    let found = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("lvp_icd")));
    assert!(
        found || std::env::var_os("CI").is_none(),
        "CI needs lavapipe for the wgpu tests: apt-get install mesa-vulkan-drivers"
    );
    if !found {
        eprintln!("skipping: no lavapipe here (apt-get install mesa-vulkan-drivers)");
    }
    found
}

/// The wgpu device on lavapipe (`wgpu:cpu`) with autodiff, when lavapipe is
/// installed ([`lavapipe`]).
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn lavapipe_device() -> Option<Device> {
    let spec: DeviceSpec = "wgpu:cpu".parse().expect("a device name");
    lavapipe().then(|| spec.device().expect("a wgpu build").autodiff())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_bad_ones_say_what_is_accepted() {
        for name in [
            "cpu",
            "wgpu",
            "wgpu:1",
            "wgpu:cpu",
            "vulkan:cpu",
            "cuda:0",
            "rocm:3",
        ] {
            let spec: DeviceSpec = name.parse().unwrap();
            assert_eq!(spec.to_string(), name);
        }
        for bad in ["gpu", "cpu:0", "cuda:cpu", "wgpu:x", "cuda:", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert_eq!(err.given, bad);
            assert!(err.to_string().contains("cpu, wgpu, vulkan"), "{err}");
        }
    }

    #[test]
    fn several_devices_are_separated_by_commas_each_once() {
        for names in ["cpu", "cuda:0,cuda:1", "wgpu:cpu,wgpu,vulkan:1"] {
            let devices: Devices = names.parse().unwrap();
            assert_eq!(devices.to_string(), names);
            assert_eq!(devices.all().len(), names.split(',').count());
        }
        assert_eq!(Devices::default().all(), [DeviceSpec::CPU]);
        let twice = "cuda:0,cuda:1,cuda:0".parse::<Devices>().unwrap_err();
        assert!(
            twice.to_string().contains("each device at most once"),
            "{twice}"
        );
        let bad = "cuda:0,gpu".parse::<Devices>().unwrap_err();
        assert_eq!(bad.given, "gpu");
        assert!("cuda:0,".parse::<Devices>().is_err());
    }

    #[test]
    fn a_backend_missing_from_the_build_names_its_feature() {
        assert!(DeviceSpec::CPU.device().is_ok());
        for backend in [Backend::Wgpu, Backend::Vulkan, Backend::Cuda, Backend::Rocm] {
            let spec = DeviceSpec {
                backend,
                adapter: Adapter::Default,
            };
            if backend.built() {
                continue;
            }
            let err = spec.device().unwrap_err().to_string();
            assert!(
                err.contains(&format!("--features {}", backend.name())),
                "{err}"
            );
        }
    }
}
