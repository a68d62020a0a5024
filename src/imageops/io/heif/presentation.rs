//! What a HEIF file's properties say about showing its primary image, whichever codec
//! stores the pixels (AV1 in AVIF, HEVC in HEIC): the clean aperture, rotation and mirror,
//! the colour description and HDR levels, and the Exif and XMP items. Both formats are read
//! through the one `image` crate decoder here, [`HeifDecoder`].

use std::borrow::Cow;

use image::error::{DecodingError, ImageFormatHint, UnsupportedError, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageError, ImageResult};
use png::{
    CodingIndependentCodePoints, ContentLightLevelInfo, MasteringDisplayColorVolume, ScaledFloat,
    SourceChromaticities,
};

use super::{name, CleanAperture, Colour, Heif, HeifError, MasteringDisplay, Nclx, Property};
use crate::imageops::io::png::PngColour;
use crate::imageops::Planar;

/// How the primary image of a HEIF file is to be shown, from its item properties.
#[derive(Debug, Clone)]
pub(in crate::imageops::io) struct Presentation {
    /// The stored size, before the clean aperture and rotation.
    pub stored: (usize, usize),
    /// The clean aperture as a pixel rectangle (x, y, width, height).
    crop: Option<(usize, usize, usize, usize)>,
    /// `irot`: quarter turns anticlockwise.
    rotation: u8,
    /// `imir`: 0 exchanges top and bottom, 1 left and right.
    mirror: Option<u8>,
    pub icc: Option<Vec<u8>>,
    pub nclx: Option<Nclx>,
    light: Option<(u16, u16)>,
    mastering: Option<MasteringDisplay>,
    /// The TIFF-headed Exif data of the first `Exif` item describing the primary one.
    pub exif: Option<Vec<u8>>,
    /// The XMP packet of the first XMP item describing the primary one.
    pub xmp: Option<Vec<u8>>,
}

impl Presentation {
    /// Reads the primary item's properties; `stored` is its size as stored. A property
    /// marked essential that is not understood, or a layer selection, is refused.
    pub fn read(heif: &Heif, stored: (usize, usize)) -> Result<Self, HeifError> {
        let mut shown = Presentation {
            stored,
            crop: None,
            rotation: 0,
            mirror: None,
            icc: None,
            nclx: None,
            light: None,
            mastering: None,
            exif: find_exif(heif, heif.primary),
            xmp: find_xmp(heif, heif.primary),
        };
        for (p, essential) in heif.properties(heif.primary)? {
            match p {
                Property::Colour(Colour::Icc(icc)) if shown.icc.is_none() => {
                    shown.icc = Some(icc.clone())
                }
                &Property::Colour(Colour::Nclx(nclx)) if shown.nclx.is_none() => {
                    shown.nclx = Some(nclx)
                }
                &Property::Rotation(r) => shown.rotation = r,
                &Property::Mirror(axis) => shown.mirror = Some(axis),
                Property::CleanAperture(clap) => shown.crop = Some(crop_rect(clap, stored)?),
                &Property::LightLevel(max, average) => shown.light = Some((max, average)),
                Property::MasteringDisplay(m) => shown.mastering = Some(*m),
                &Property::LayerSelection(layer) if layer != 0xffff => {
                    return Err(HeifError::Unsupported(format!(
                        "a layered image shown at layer {layer} ('lsel')"
                    )));
                }
                Property::Other(kind) if essential => {
                    return Err(HeifError::Unsupported(format!(
                        "the essential property '{}'",
                        name(kind)
                    )));
                }
                _ => {}
            }
        }
        Ok(shown)
    }

    /// The size after the clean aperture.
    pub fn cropped_size(&self) -> (usize, usize) {
        self.crop.map_or(self.stored, |(_, _, w, h)| (w, h))
    }

    /// The clean aperture as a pixel rectangle (x, y, width, height) of the stored image.
    pub fn crop_rect(&self) -> Option<(usize, usize, usize, usize)> {
        self.crop
    }

    /// Applies the clean aperture, the first of the transforms MIAF orders, to a plane
    /// of the stored size.
    pub fn crop(&self, p: Planar) -> Planar {
        match self.crop {
            Some((x, y, w, h)) => p.crop_clamped(y as isize, x as isize, h, w),
            None => p,
        }
    }

    /// The rotation (`irot`, quarter turns anticlockwise) then mirror (`imir`) that show
    /// the cropped picture upright, as the image crate's orientation: a clockwise turn,
    /// then perhaps a horizontal flip (a vertical one is a half turn more and a
    /// horizontal flip). HEIF readers obey these, not an Exif Orientation.
    pub fn orientation(&self) -> Orientation {
        let clockwise = (4 - self.rotation) % 4;
        let (clockwise, flip) = match self.mirror {
            Some(0) => ((clockwise + 2) % 4, true),
            Some(_) => (clockwise, true),
            None => (clockwise, false),
        };
        match (clockwise, flip) {
            (1, false) => Orientation::Rotate90,
            (2, false) => Orientation::Rotate180,
            (3, false) => Orientation::Rotate270,
            (0, true) => Orientation::FlipHorizontal,
            (1, true) => Orientation::Rotate90FlipH,
            (2, true) => Orientation::FlipVertical,
            (3, true) => Orientation::Rotate270FlipH,
            _ => Orientation::NoTransforms,
        }
    }

    /// The colour description to carry to PNG outputs: the H.273 code points where no ICC
    /// profile is given (an ICC profile outranks them, as in libavif), and the
    /// HDR levels.
    pub fn png_colour(&self) -> PngColour {
        let srgb_like = |n: &Nclx| matches!(n.primaries, 1 | 2) && matches!(n.transfer, 2 | 13);
        let cicp = self
            .nclx
            .filter(|n| self.icc.is_none() && !srgb_like(n))
            .map(|n| CodingIndependentCodePoints {
                color_primaries: u8::try_from(n.primaries).unwrap_or(2),
                transfer_function: u8::try_from(n.transfer).unwrap_or(2),
                matrix_coefficients: 0,
                is_video_full_range_image: true,
            });
        PngColour {
            cicp,
            mastering_display: self.mastering.map(mastering_display),
            content_light: self.light.map(|(max, average)| ContentLightLevelInfo {
                max_content_light_level: u32::from(max) * 10_000,
                max_frame_average_light_level: u32::from(average) * 10_000,
            }),
            ..PngColour::default()
        }
    }
}

/// The XMP packet of the first `mime` item of type `application/rdf+xml` describing item
/// `id`.
fn find_xmp(heif: &Heif, id: u32) -> Option<Vec<u8>> {
    let xmp = heif.references_to(id, b"cdsc").into_iter().find(|&e| {
        heif.item(e)
            .is_ok_and(|i| i.content_type.as_deref() == Some("application/rdf+xml"))
    })?;
    heif.data(xmp).ok().map(Cow::into_owned)
}

/// The TIFF-headed Exif data of the first `Exif` item describing item `id`.
fn find_exif(heif: &Heif, id: u32) -> Option<Vec<u8>> {
    let exif = heif
        .references_to(id, b"cdsc")
        .into_iter()
        .find(|&e| heif.item(e).is_ok_and(|i| &i.kind == b"Exif"))?;
    let data = heif.data(exif).ok()?;
    let offset = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    data.get(4usize.checked_add(offset)?..).map(<[u8]>::to_vec)
}

/// The clean aperture as a pixel rectangle (x, y, width, height) of a `size` image;
/// MIAF requires it to be whole pixels inside the image.
fn crop_rect(
    clap: &CleanAperture,
    (w, h): (usize, usize),
) -> Result<(usize, usize, usize, usize), HeifError> {
    let bad = || {
        HeifError::Corrupt(
            "the clean aperture ('clap') is not a whole-pixel crop of the image".into(),
        )
    };
    // Origin = (size - aperture) / 2 + offset, in exact fractions.
    let axis = |size: usize, (n, d): (u32, u32), (on, od): (i32, u32)| {
        let (n, d, on, od, size) = (
            i128::from(n),
            i128::from(d),
            i128::from(on),
            i128::from(od),
            size as i128,
        );
        if d == 0 || od == 0 || n % d != 0 {
            return Err(bad());
        }
        let extent = n / d;
        let num = (size - extent) * od + 2 * on;
        let den = 2 * od;
        if num % den != 0 {
            return Err(bad());
        }
        let origin = num / den;
        if extent <= 0 || origin < 0 || origin + extent > size {
            return Err(bad());
        }
        Ok((origin as usize, extent as usize))
    };
    let (x, cw) = axis(w, clap.width, clap.horizontal_offset)?;
    let (y, ch) = axis(h, clap.height, clap.vertical_offset)?;
    Ok((x, y, cw, ch))
}

/// An `mdcv` box as PNG's mDCV: primaries told apart by position (the box should list
/// green, blue, red, but writers differ), all in 0.00002 units.
fn mastering_display(m: MasteringDisplay) -> MasteringDisplayColorVolume {
    let mut p = m.primaries;
    p.sort_by_key(|&(x, _)| std::cmp::Reverse(x));
    let red = p[0];
    let (green, blue) = if p[1].1 >= p[2].1 {
        (p[1], p[2])
    } else {
        (p[2], p[1])
    };
    let xy = |(x, y): (u16, u16)| {
        (
            ScaledFloat::from_scaled(u32::from(x) * 2),
            ScaledFloat::from_scaled(u32::from(y) * 2),
        )
    };
    MasteringDisplayColorVolume {
        chromaticities: SourceChromaticities {
            white: xy(m.white_point),
            red: xy(red),
            green: xy(green),
            blue: xy(blue),
        },
        max_luminance: m.max_luminance,
        min_luminance: m.min_luminance,
    }
}

/// The codec side of a HEIF image: what its coded pictures decode to.
pub(in crate::imageops::io) trait Codec {
    /// The format's name, for errors.
    const NAME: &'static str;

    fn presentation(&self) -> &Presentation;

    /// Whether the file also holds an image sequence or animation (only its still image
    /// is read).
    fn is_sequence(&self) -> bool;

    /// The type of the samples [`Self::decode`] gives.
    fn color_type(&self) -> ColorType;

    /// Decodes the picture with its clean aperture applied but not yet turned upright,
    /// to samples as `ImageDecoder::read_image` gives them.
    fn decode(self) -> Result<Vec<u8>, HeifError>;
}

/// The `image` crate's colour type of samples `deep` (16-bit) or not, gray or RGB, with
/// alpha or not.
pub(in crate::imageops::io) fn color_type(deep: bool, gray: bool, alpha: bool) -> ColorType {
    match (deep, gray, alpha) {
        (false, true, false) => ColorType::L8,
        (false, true, true) => ColorType::La8,
        (false, false, false) => ColorType::Rgb8,
        (false, false, true) => ColorType::Rgba8,
        (true, true, false) => ColorType::L16,
        (true, true, true) => ColorType::La16,
        (true, false, false) => ColorType::Rgb16,
        (true, false, true) => ColorType::Rgba16,
    }
}

/// A HEIF image, read through the `image` crate's decoder interface; the rotation and
/// mirror are its orientation, for the caller to apply.
pub(in crate::imageops::io) struct HeifDecoder<C>(pub C);

impl<C: Codec> HeifDecoder<C> {
    fn error(e: HeifError) -> ImageError {
        let hint = || ImageFormatHint::Name(C::NAME.into());
        match e {
            HeifError::Corrupt(detail) => ImageError::Decoding(DecodingError::new(hint(), detail)),
            HeifError::Unsupported(detail) => {
                ImageError::Unsupported(UnsupportedError::from_format_and_kind(
                    hint(),
                    UnsupportedErrorKind::GenericFeature(detail),
                ))
            }
        }
    }
}

impl<C: Codec> ImageDecoder for HeifDecoder<C> {
    fn dimensions(&self) -> (u32, u32) {
        let (w, h) = self.0.presentation().cropped_size();
        (
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
        )
    }

    fn color_type(&self) -> ColorType {
        self.0.color_type()
    }

    fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.0.presentation().icc.clone())
    }

    fn exif_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.0.presentation().exif.clone())
    }

    fn xmp_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.0.presentation().xmp.clone())
    }

    fn orientation(&mut self) -> ImageResult<Orientation> {
        Ok(self.0.presentation().orientation())
    }

    fn set_limits(&mut self, limits: image::Limits) -> ImageResult<()> {
        limits.check_support(&image::LimitSupport::default())?;
        let (w, h) = self.dimensions();
        limits.check_dimensions(w, h)
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        let bytes = self.0.decode().map_err(Self::error)?;
        if bytes.len() != buf.len() {
            return Err(Self::error(HeifError::Corrupt(
                "the decoded picture's size differs from the one the file states".into(),
            )));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_aperture_must_be_whole_pixels_inside() {
        let clap = |w: u32, h: u32, dx: (i32, u32), dy: (i32, u32)| CleanAperture {
            width: (w, 1),
            height: (h, 1),
            horizontal_offset: dx,
            vertical_offset: dy,
        };
        // Centred: (37 - 30) / 2 - 1/2 = 3.
        assert_eq!(
            crop_rect(&clap(30, 18, (-1, 2), (-1, 2)), (37, 23)),
            Ok((3, 2, 30, 18))
        );
        assert_eq!(
            crop_rect(&clap(37, 23, (0, 1), (0, 1)), (37, 23)),
            Ok((0, 0, 37, 23))
        );
        // Half a pixel off, outside the image, zero denominators.
        assert!(crop_rect(&clap(30, 18, (0, 1), (0, 1)), (37, 23)).is_err());
        assert!(crop_rect(&clap(30, 18, (4, 1), (0, 1)), (36, 18)).is_err());
        assert!(crop_rect(&clap(30, 18, (0, 0), (0, 1)), (30, 18)).is_err());
    }
}
