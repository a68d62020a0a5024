//! Physical pixel density ("DPI"): how large an image prints. It is kept unchanged on the
//! upscale, as the EXIF resolution tags are, so the output prints as many times larger as
//! it has more pixels, at the source's density: what enlarging a scan or a photo for print
//! asks for. Each format records it its own way (PNG pHYs, JFIF, TIFF and EXIF tags, BMP
//! header); this is the one value they are read into and written from.

/// Pixels per unit across (`x`) and down (`y`), as the file records them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Density {
    pub x: f64,
    pub y: f64,
    pub unit: DensityUnit,
}

/// The unit of a [`Density`]; with none, `x:y` is only the pixels' aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensityUnit {
    Inch,
    Centimetre,
    Metre,
    None,
}

/// Metres per inch.
const INCH: f64 = 0.0254;

impl Density {
    /// `None` where a value is not positive and finite, and for square pixels without a
    /// unit, which says nothing (JFIF writers put it where they know no density).
    pub fn new(x: f64, y: f64, unit: DensityUnit) -> Option<Self> {
        let valid = |v: f64| v.is_finite() && v > 0.0;
        let says_nothing = unit == DensityUnit::None && x == y;
        (valid(x) && valid(y) && !says_nothing).then_some(Self { x, y, unit })
    }

    /// The density once the image is flipped or turned: a quarter turn (`transpose`)
    /// trades across for down.
    pub fn turned(self, transpose: bool) -> Self {
        if transpose {
            Self {
                x: self.y,
                y: self.x,
                ..self
            }
        } else {
            self
        }
    }

    /// The density per inch; `None` for an aspect ratio only.
    pub fn in_inches(self) -> Option<Self> {
        let scale = match self.unit {
            DensityUnit::None => return None,
            DensityUnit::Inch => 1.0,
            DensityUnit::Centimetre => 100.0 * INCH,
            DensityUnit::Metre => INCH,
        };
        Some(Self {
            x: self.x * scale,
            y: self.y * scale,
            unit: DensityUnit::Inch,
        })
    }

    /// From TIFF or EXIF tags: XResolution, YResolution (XResolution where absent) and
    /// ResolutionUnit (1 none, 2 inch, 3 centimetre; inch where absent, as TIFF defines).
    pub fn from_tiff(x: f64, y: Option<f64>, unit: Option<u16>) -> Option<Self> {
        let unit = match unit {
            Some(1) => DensityUnit::None,
            None | Some(2) => DensityUnit::Inch,
            Some(3) => DensityUnit::Centimetre,
            Some(_) => return None,
        };
        Self::new(x, y.unwrap_or(x), unit)
    }

    /// TIFF's ResolutionUnit and XResolution, YResolution as rationals. TIFF has no
    /// per-metre unit: a PNG's density is written per centimetre, exactly.
    pub fn to_tiff(self) -> (u16, (u32, u32), (u32, u32)) {
        let (unit, scale) = match self.unit {
            DensityUnit::None => (1, 1.0),
            DensityUnit::Inch => (2, 1.0),
            DensityUnit::Centimetre => (3, 1.0),
            DensityUnit::Metre => (3, 0.01),
        };
        (unit, rational(self.x * scale), rational(self.y * scale))
    }

    /// From a JFIF segment's units (0 none, 1 inch, 2 centimetre) and densities.
    pub fn from_jfif(units: u8, x: u16, y: u16) -> Option<Self> {
        let unit = match units {
            0 => DensityUnit::None,
            1 => DensityUnit::Inch,
            2 => DensityUnit::Centimetre,
            _ => return None,
        };
        Self::new(f64::from(x), f64::from(y), unit)
    }

    /// JFIF's units and densities, in whole numbers: a per-metre density is written per
    /// inch (dpi are the round numbers), unless it is a whole number per centimetre. `None`
    /// where a value rounds outside JFIF's 16 bits.
    pub fn to_jfif(self) -> Option<(u8, u16, u16)> {
        let (units, scale) = match self.unit {
            DensityUnit::None => (0, 1.0),
            DensityUnit::Inch => (1, 1.0),
            DensityUnit::Centimetre => (2, 1.0),
            DensityUnit::Metre if self.x % 100.0 == 0.0 && self.y % 100.0 == 0.0 => (2, 0.01),
            DensityUnit::Metre => (1, INCH),
        };
        let whole = |v: f64| {
            u16::try_from((v * scale).round() as u64)
                .ok()
                .filter(|&v| v > 0)
        };
        Some((units, whole(self.x)?, whole(self.y)?))
    }

    /// PNG's pHYs: pixels per metre (`true`) or, without a unit, the aspect ratio. `None`
    /// where a value rounds outside PNG's range (1 to 2³¹ − 1).
    pub fn to_png(self) -> Option<(bool, u32, u32)> {
        let scale = match self.unit {
            DensityUnit::None => 1.0,
            DensityUnit::Inch => 1.0 / INCH,
            DensityUnit::Centimetre => 100.0,
            DensityUnit::Metre => 1.0,
        };
        let whole = |v: f64| {
            let v = (v * scale).round();
            (1.0..=f64::from(i32::MAX)).contains(&v).then_some(v as u32)
        };
        Some((
            self.unit != DensityUnit::None,
            whole(self.x)?,
            whole(self.y)?,
        ))
    }
}

/// `v` as a TIFF RATIONAL: exact for whole numbers and for up to four decimals.
fn rational(v: f64) -> (u32, u32) {
    let denominator: u32 = if v.fract() == 0.0 { 1 } else { 10_000 };
    let numerator = (v * f64::from(denominator)).round().max(1.0);
    if numerator > f64::from(u32::MAX) {
        return (v.round().min(f64::from(u32::MAX)) as u32, 1);
    }
    let numerator = numerator as u32;
    let divisor = gcd(numerator, denominator).max(1);
    (numerator / divisor, denominator / divisor)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_say_nothing_are_none() {
        assert_eq!(Density::new(1.0, 1.0, DensityUnit::None), None);
        assert_eq!(Density::new(0.0, 300.0, DensityUnit::Inch), None);
        assert_eq!(Density::new(f64::NAN, 300.0, DensityUnit::Inch), None);
        assert_eq!(Density::from_jfif(1, 0, 0), None);
        assert_eq!(Density::from_jfif(3, 72, 72), None);
        assert_eq!(Density::from_tiff(300.0, None, Some(4)), None);
        assert!(Density::new(2.0, 1.0, DensityUnit::None).is_some());
    }

    #[test]
    fn tiff_defaults_to_inches_and_square_pixels() {
        let d = Density::from_tiff(300.0, None, None).unwrap();
        assert_eq!((d.x, d.y, d.unit), (300.0, 300.0, DensityUnit::Inch));
        assert_eq!(d.to_tiff(), (2, (300, 1), (300, 1)));
    }

    /// The common densities survive every conversion between formats.
    #[test]
    fn densities_cross_formats_without_drift() {
        let inch = Density::new(300.0, 300.0, DensityUnit::Inch).unwrap();
        assert_eq!(inch.to_png(), Some((true, 11811, 11811)));
        assert_eq!(inch.to_jfif(), Some((1, 300, 300)));
        // PNG's 11811 px/m is 299.9994 dpi: JFIF gets 300 dpi, TIFF 118.11 px/cm exactly.
        let png = Density::new(11811.0, 11811.0, DensityUnit::Metre).unwrap();
        assert_eq!(png.to_jfif(), Some((1, 300, 300)));
        assert_eq!(png.to_tiff(), (3, (11811, 100), (11811, 100)));
        assert_eq!(png.to_png(), Some((true, 11811, 11811)));
        let per_cm = Density::new(4000.0, 2000.0, DensityUnit::Metre).unwrap();
        assert_eq!(per_cm.to_jfif(), Some((2, 40, 20)));
        let cm = Density::from_tiff(118.11, None, Some(3)).unwrap();
        assert_eq!(cm.to_png(), Some((true, 11811, 11811)));
        assert_eq!(cm.to_tiff(), (3, (11811, 100), (11811, 100)));
        let aspect = Density::from_jfif(0, 2, 1).unwrap();
        assert_eq!(aspect.to_png(), Some((false, 2, 1)));
        assert_eq!(aspect.to_tiff(), (1, (2, 1), (1, 1)));
        assert_eq!(
            Density::new(72.5, 72.5, DensityUnit::Inch)
                .unwrap()
                .to_tiff(),
            (2, (145, 2), (145, 2))
        );
    }

    #[test]
    fn out_of_range_values_are_bounded() {
        let huge = Density::new(1e12, 1e12, DensityUnit::Inch).unwrap();
        assert_eq!(huge.to_jfif(), None);
        assert_eq!(huge.to_tiff().1, (u32::MAX, 1));
        assert_eq!(huge.to_png(), None);
        let tiny = Density::new(0.001, 0.001, DensityUnit::Inch).unwrap();
        assert_eq!(tiny.to_jfif(), None);
        assert_eq!(tiny.to_png(), None);
        assert_eq!(tiny.to_tiff().1, (1, 1000));
    }

    #[test]
    fn transposing_swaps_the_axes() {
        let d = Density::new(300.0, 150.0, DensityUnit::Inch).unwrap();
        assert_eq!(d.turned(false), d);
        assert_eq!(
            d.turned(true),
            Density::new(150.0, 300.0, DensityUnit::Inch).unwrap()
        );
    }
}
