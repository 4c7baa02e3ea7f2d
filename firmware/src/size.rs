//! Frame sizes written as `WxH`.

use core::fmt;
use core::str::FromStr;

/// A frame size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Size {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl Size {
    /// A `width` x `height` size.
    pub const fn new(width: u32, height: u32) -> Size {
        Size { width, height }
    }

    /// Pixels in a frame of this size.
    pub const fn area(self) -> usize {
        self.width as usize * self.height as usize
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Why a `WxH` string is not a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseSizeError;

impl fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a size as WIDTHxHEIGHT with both sides at least 1, such as 480x360")
    }
}

impl core::error::Error for ParseSizeError {}

impl FromStr for Size {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Size, ParseSizeError> {
        let (w, h) = s.split_once(['x', 'X']).ok_or(ParseSizeError)?;
        let width: u32 = w.trim().parse().map_err(|_| ParseSizeError)?;
        let height: u32 = h.trim().parse().map_err(|_| ParseSizeError)?;
        if width == 0 || height == 0 {
            return Err(ParseSizeError);
        }
        Ok(Size { width, height })
    }
}

/// Longest side a source's frames may have (16K video is 15360 wide).
pub const MAX_FRAME_SIDE: u32 = 16_384;

/// Most pixels a source's frame may have: 8K video (7680x4320) fits; an RGB
/// frame of this size is 192 MiB.
pub const MAX_FRAME_PIXELS: u64 = 64 << 20;

/// Parses a frame size `WxH` of a source description, within
/// [`MAX_FRAME_SIDE`] and [`MAX_FRAME_PIXELS`]; the error says why not.
#[cfg(feature = "alloc")]
pub fn frame_size(s: &str) -> Result<Size, alloc::string::String> {
    let size = s
        .parse::<Size>()
        .map_err(|e| alloc::format!("{s:?} is not a size: {e}"))?;
    if size.width > MAX_FRAME_SIDE
        || size.height > MAX_FRAME_SIDE
        || u64::from(size.width) * u64::from(size.height) > MAX_FRAME_PIXELS
    {
        return Err(alloc::format!(
            "{size} is larger than a camera frame can be here (at most \
             {MAX_FRAME_SIDE} pixels a side and {} megapixels)",
            MAX_FRAME_PIXELS >> 20
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("480x360".parse(), Ok(Size::new(480, 360)));
        assert_eq!("64X48".parse(), Ok(Size::new(64, 48)));
        assert_eq!(Size::new(3, 2).to_string(), "3x2");
        for bad in ["", "480", "x360", "0x10", "10x0", "-1x5", "axb", "1x2x3"] {
            assert_eq!(bad.parse::<Size>(), Err(ParseSizeError), "{bad}");
        }
    }
}
