//! AVIF: HEIF items holding AV1 pictures. The pictures are decoded by rav1d (a Rust port
//! of dav1d, built without its assembly so no assembler is needed) and turned into RGB
//! as libavif does: its matrices, ranges and bilinear chroma upsampling, then the clean
//! aperture; the rotation and mirroring the file asks for are its orientation. Image grids (how cameras store
//! large photos), alpha (also premultiplied), Exif items, ICC profiles and the H.273
//! colour description are read. rav1d aborts the process on some damaged data, so the
//! command-line tool decodes in a child process (see [`decode_avif_in_child_process`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

use image::{ColorType, DynamicImage};
use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::headers::{
    Dav1dSequenceHeader, DAV1D_PIXEL_LAYOUT_I400, DAV1D_PIXEL_LAYOUT_I420, DAV1D_PIXEL_LAYOUT_I422,
};
use rav1d::include::dav1d::picture::Dav1dPicture;
use rav1d::src::lib::{
    dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings, dav1d_get_picture,
    dav1d_open, dav1d_parse_sequence_header, dav1d_picture_unref, dav1d_send_data,
};

use super::heif::{
    color_type, find_alpha, Av1Config, Codec, Coding, Heif, HeifError, Nclx, Presentation,
    Property, Source,
};
use super::planes::{planes_to_image, unpremultiply_coded, ycbcr_to_rgb};
use crate::imageops::Planar;

/// AVIF's pictures: AV1 items.
const AV1: Coding = Coding {
    item: *b"av01",
    name: "AV1",
};

/// An AVIF file, parsed but not yet decoded; decoding happens in [`Codec::decode`].
pub(super) struct AvifDecoder<'a> {
    heif: Heif<'a>,
    shown: Presentation,
    colour: Source,
    alpha: Option<Source>,
    premultiplied: bool,
    depth: u8,
    monochrome: bool,
    operating_point: u8,
    /// The most pixels an AV1 picture (an item or, in a grid, a tile) has by its `ispe`,
    /// so that a damaged sequence header cannot make the decoder allocate more.
    frame_limit: u32,
}

impl<'a> AvifDecoder<'a> {
    /// Reads the container of `file`; nothing is decoded yet.
    pub fn new(file: &'a [u8]) -> Result<Self, HeifError> {
        let heif = Heif::parse(file)?;
        let primary = heif.primary;
        let colour = Source::of(&heif, primary, AV1)?;
        let config = av1_config(&heif, colour.first())?;
        let shown = Presentation::read(&heif, colour.stored_size(&heif)?)?;
        if let (Some(nclx), false) = (shown.nclx, config.monochrome) {
            Matrix::of(nclx, Layout::of_config(&config))?;
        }
        let operating_point = heif
            .properties(primary)?
            .into_iter()
            .find_map(|(p, _)| match *p {
                Property::OperatingPoint(op) => Some(op),
                _ => None,
            })
            .unwrap_or(0);
        let (alpha, premultiplied) = match find_alpha(&heif, AV1, shown.stored)? {
            Some((alpha, premultiplied)) => (Some(alpha), premultiplied),
            None => (None, false),
        };
        let mut decoder = AvifDecoder {
            shown,
            colour,
            alpha,
            premultiplied,
            depth: config.depth,
            monochrome: config.monochrome,
            operating_point,
            frame_limit: 0,
            heif,
        };
        let mut pictures = vec![decoder.colour.first()];
        pictures.extend(decoder.alpha.as_ref().map(Source::first));
        for id in pictures {
            let (w, h) = Source::Single(id).stored_size(&decoder.heif)?;
            let pixels = u32::try_from(w * h).unwrap_or(u32::MAX);
            decoder.frame_limit = decoder.frame_limit.max(pixels);
        }
        Ok(decoder)
    }

    /// Decodes and converts the picture(s), then applies the clean aperture (the first of
    /// the transforms MIAF orders; the caller turns the result by [`Self::orientation`]).
    fn decode_here(self) -> Result<DynamicImage, HeifError> {
        let mut av1 = Av1Decoder::new(self.frame_limit, self.operating_point)?;
        let mut decode = |source: &Source| {
            let yuv = decode_source(&self.heif, source, &mut av1)?;
            let (w, h) = self.shown.stored;
            if (yuv.width, yuv.height) != (w, h) {
                return Err(HeifError::Corrupt(format!(
                    "the image is {w}x{h} by its header but its AV1 picture is {}x{}",
                    yuv.width, yuv.height
                )));
            }
            Ok(yuv)
        };
        let yuv = decode(&self.colour)?;
        let mut rgb = yuv.to_rgb(self.shown.nclx.unwrap_or(yuv.colour))?;
        let alpha = match &self.alpha {
            Some(source) => Some(decode(source)?.alpha()),
            None => None,
        };
        if let (true, Some(a)) = (self.premultiplied, &alpha) {
            unpremultiply_coded(&mut rgb, a);
        }
        let (rgb, alpha) = (self.shown.crop(rgb), alpha.map(|a| self.shown.crop(a)));
        Ok(planes_to_image(
            &rgb,
            alpha.as_ref(),
            self.depth > 8,
            self.monochrome,
        ))
    }
}

/// The `av1C` of an AV1 item.
fn av1_config(heif: &Heif, id: u32) -> Result<Av1Config, HeifError> {
    heif.properties(id)?
        .into_iter()
        .find_map(|(p, _)| match p {
            Property::Av1Config(c) => Some(*c),
            _ => None,
        })
        .ok_or_else(|| HeifError::Corrupt("an image has no AV1 configuration ('av1C')".into()))
}

/// How the chroma planes are subsampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    I400,
    I420,
    I422,
    I444,
}

impl Layout {
    /// The layout of a rav1d picture or sequence header.
    fn of_dav1d(layout: u32) -> Self {
        match layout {
            DAV1D_PIXEL_LAYOUT_I400 => Self::I400,
            DAV1D_PIXEL_LAYOUT_I420 => Self::I420,
            DAV1D_PIXEL_LAYOUT_I422 => Self::I422,
            _ => Self::I444,
        }
    }

    /// The layout an `av1C` box declares.
    fn of_config(config: &Av1Config) -> Self {
        match (config.monochrome, config.subsampling) {
            (true, _) => Self::I400,
            (false, (true, true)) => Self::I420,
            (false, (true, false)) => Self::I422,
            _ => Self::I444,
        }
    }

    /// The horizontal and vertical subsampling shifts of the chroma planes.
    fn shifts(self) -> (usize, usize) {
        match self {
            Self::I420 => (1, 1),
            Self::I422 => (1, 0),
            Self::I400 | Self::I444 => (0, 0),
        }
    }
}

/// A decoded picture: luma and chroma samples (chroma empty for monochrome) and the AV1
/// sequence header's colour description.
#[derive(Debug, Clone)]
struct Yuv {
    width: usize,
    height: usize,
    depth: u8,
    layout: Layout,
    planes: [Vec<u16>; 3],
    /// The AV1 sequence header's colour description.
    colour: Nclx,
}

impl Yuv {
    fn chroma_size(&self) -> (usize, usize) {
        let (sx, sy) = self.layout.shifts();
        ((self.width + sx) >> sx, (self.height + sy) >> sy)
    }

    fn plane_size(&self, plane: usize) -> (usize, usize) {
        if plane == 0 {
            (self.width, self.height)
        } else {
            self.chroma_size()
        }
    }

    /// A blank picture of this one's kind and another size.
    fn blank(&self, width: usize, height: usize) -> Yuv {
        let mut out = Yuv {
            width,
            height,
            planes: Default::default(),
            ..self.clone()
        };
        for p in 0..self.plane_count() {
            let (w, h) = out.plane_size(p);
            out.planes[p] = vec![0; w * h];
        }
        out
    }

    fn plane_count(&self) -> usize {
        if self.layout == Layout::I400 {
            1
        } else {
            3
        }
    }

    /// Copies `tile` in with its top-left corner at (x, y) (chroma-aligned), clipped.
    fn paste(&mut self, tile: &Yuv, x: usize, y: usize) {
        let (sx, sy) = self.layout.shifts();
        for p in 0..self.plane_count() {
            let (ox, oy) = if p == 0 { (x, y) } else { (x >> sx, y >> sy) };
            let (w, h) = self.plane_size(p);
            let (tw, th) = tile.plane_size(p);
            let cols = tw.min(w.saturating_sub(ox));
            for row in 0..th.min(h.saturating_sub(oy)) {
                let dst = (oy + row) * w + ox;
                self.planes[p][dst..dst + cols]
                    .copy_from_slice(&tile.planes[p][row * tw..row * tw + cols]);
            }
        }
    }

    /// The luma plane as alpha in [0, 1] (alpha is full range, as libavif takes it).
    fn alpha(&self) -> Planar {
        let max = f32::from((1u16 << self.depth) - 1);
        let a = self.planes[0].iter().map(|&v| f32::from(v) / max).collect();
        Planar::new(1, self.height, self.width, a)
    }

    /// RGB in [0, 1] by the matrix and range of `colour` (luma in all three planes for a
    /// monochrome picture).
    fn to_rgb(&self, colour: Nclx) -> Result<Planar, HeifError> {
        let full_range = colour.full_range;
        let depth = i32::from(self.depth);
        let max = ((1 << depth) - 1) as f32;
        let (y_bias, y_range, uv_range) = if full_range {
            (0.0, max, max)
        } else {
            let s = (1 << (depth - 8)) as f32;
            (16.0 * s, 219.0 * s, 224.0 * s)
        };
        let uv_bias = (1 << (depth - 1)) as f32;
        let luma = |v: u16| (f32::from(v) - y_bias) / y_range;
        let (w, h) = (self.width, self.height);
        if self.layout == Layout::I400 {
            let gray: Vec<f32> = self.planes[0]
                .iter()
                .map(|&v| luma(v).clamp(0.0, 1.0))
                .collect();
            return Ok(Planar::new(3, h, w, gray.repeat(3)));
        }
        let kind = Matrix::of(colour, self.layout)?;
        // GBR stores each colour like luma; Y'CbCr chroma is centred on zero.
        let chroma = |v: f32| {
            if kind == Matrix::Identity {
                (v - y_bias) / y_range
            } else {
                (v - uv_bias) / uv_range
            }
        };
        let (sx, sy) = self.layout.shifts();
        let (cw, ch) = self.chroma_size();
        let n = w * h;
        let mut out = vec![0.0; 3 * n];
        for y in 0..h {
            // Bilinear chroma: 3/4 of the nearest chroma row or column, 1/4 of the next
            // one on the side of this luma sample (itself at the edges).
            let (cy, cy2) = neighbours(y, sy, ch);
            for x in 0..w {
                let (cx, cx2) = neighbours(x, sx, cw);
                let sample = |p: usize| {
                    let at = |r: usize, c: usize| f32::from(self.planes[p][r * cw + c]);
                    let v = match (sx, sy) {
                        (0, 0) => at(cy, cx),
                        (1, 0) => 0.75 * at(cy, cx) + 0.25 * at(cy, cx2),
                        _ => {
                            0.5625 * at(cy, cx)
                                + 0.1875 * (at(cy, cx2) + at(cy2, cx))
                                + 0.0625 * at(cy2, cx2)
                        }
                    };
                    chroma(v)
                };
                let yv = luma(self.planes[0][y * w + x]);
                let (cb, cr) = (sample(1), sample(2));
                let rgb = match kind {
                    Matrix::Identity => [cr, yv, cb],
                    Matrix::YCgCo => {
                        let t = yv - cb;
                        [t + cr, yv + cb, t - cr]
                    }
                    Matrix::Kr(kr, kb) => ycbcr_to_rgb(yv, cb, cr, [kr, 1.0 - kr - kb, kb]),
                };
                for (c, v) in rgb.into_iter().enumerate() {
                    out[c * n + y * w + x] = v.clamp(0.0, 1.0);
                }
            }
        }
        Ok(Planar::new(3, h, w, out))
    }
}

/// The chroma index of luma index `i` (subsampled by `shift`) and its bilinear neighbour.
fn neighbours(i: usize, shift: usize, len: usize) -> (usize, usize) {
    let c = i >> shift;
    if shift == 0 {
        return (c, c);
    }
    let other = if i % 2 == 1 {
        (c + 1).min(len - 1)
    } else {
        c.saturating_sub(1)
    };
    (c, other)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Matrix {
    Identity,
    YCgCo,
    /// Kr and Kb of a Y'CbCr matrix.
    Kr(f32, f32),
}

impl Matrix {
    /// The conversion of `colour`'s H.273 matrix for colour samples of this layout; those
    /// libavif does not convert either are refused by name.
    fn of(colour: Nclx, layout: Layout) -> Result<Self, HeifError> {
        let refuse = |what: &str| Err(HeifError::Unsupported(format!("the {what} YUV matrix")));
        Ok(match colour.matrix {
            0 if layout != Layout::I444 => return refuse("identity (GBR) with subsampled chroma,"),
            0 => Self::Identity,
            1 => Self::Kr(0.2126, 0.0722),
            2 | 5 | 6 => Self::Kr(0.299, 0.114),
            4 => Self::Kr(0.30, 0.11),
            7 => Self::Kr(0.212, 0.087),
            8 => Self::YCgCo,
            9 => Self::Kr(0.2627, 0.0593),
            12 => {
                let (kr, kb) = luma_weights(colour.primaries);
                Self::Kr(kr, kb)
            }
            10 => return refuse("BT.2020 constant-luminance"),
            11 => return refuse("SMPTE ST 2085"),
            13 => return refuse("chromaticity-derived constant-luminance"),
            14 => return refuse("ICtCp"),
            m => return refuse(&format!("reserved ({m})")),
        })
    }
}

/// Kr and Kb derived from H.273 colour primaries (its equations 39 and 40), for the
/// chromaticity-derived matrix; unknown primaries are taken as BT.709's, as libavif does.
fn luma_weights(primaries: u16) -> (f32, f32) {
    // Red, green, blue and white (x, y).
    let [r, g, b, w]: [(f64, f64); 4] = match primaries {
        4 => [(0.67, 0.33), (0.21, 0.71), (0.14, 0.08), (0.310, 0.316)],
        5 => [(0.64, 0.33), (0.29, 0.60), (0.15, 0.06), (0.3127, 0.3290)],
        6 | 7 => [
            (0.630, 0.340),
            (0.310, 0.595),
            (0.155, 0.070),
            (0.3127, 0.3290),
        ],
        8 => [
            (0.681, 0.319),
            (0.243, 0.692),
            (0.145, 0.049),
            (0.310, 0.316),
        ],
        9 => [
            (0.708, 0.292),
            (0.170, 0.797),
            (0.131, 0.046),
            (0.3127, 0.3290),
        ],
        10 => [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (1.0 / 3.0, 1.0 / 3.0)],
        11 => [
            (0.680, 0.320),
            (0.265, 0.690),
            (0.150, 0.060),
            (0.314, 0.351),
        ],
        12 => [
            (0.680, 0.320),
            (0.265, 0.690),
            (0.150, 0.060),
            (0.3127, 0.3290),
        ],
        22 => [
            (0.630, 0.340),
            (0.295, 0.605),
            (0.155, 0.077),
            (0.3127, 0.3290),
        ],
        _ => [(0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290)],
    };
    let z = |(x, y): (f64, f64)| 1.0 - x - y;
    let (rz, gz, bz, wz) = (z(r), z(g), z(b), z(w));
    let denom =
        r.0 * (g.1 * bz - b.1 * gz) + g.0 * (b.1 * rz - r.1 * bz) + b.0 * (r.1 * gz - g.1 * rz);
    let kr = r.1
        * (w.0 * (g.1 * bz - b.1 * gz)
            + w.1 * (b.0 * gz - g.0 * bz)
            + wz * (g.0 * b.1 - b.0 * g.1))
        / (w.1 * denom);
    let kb = b.1
        * (w.0 * (r.1 * gz - g.1 * rz)
            + w.1 * (g.0 * rz - r.0 * gz)
            + wz * (r.0 * g.1 - g.0 * r.1))
        / (w.1 * denom);
    (kr as f32, kb as f32)
}

/// Decodes a source: one picture, or a grid's tiles joined and cut to the grid's size.
fn decode_source(heif: &Heif, source: &Source, av1: &mut Av1Decoder) -> Result<Yuv, HeifError> {
    match source {
        Source::Single(id) => av1.decode(&heif.data(*id)?, &av1_config(heif, *id)?),
        Source::Grid(grid) => {
            let mut canvas = Canvas {
                yuv: None,
                tile: (0, 0),
                columns: grid.columns,
                rows: grid.tiles.len() / grid.columns,
                size: (grid.width, grid.height),
            };
            for (i, &id) in grid.tiles.iter().enumerate() {
                canvas.place(i, av1.decode(&heif.data(id)?, &av1_config(heif, id)?)?)?;
            }
            canvas
                .yuv
                .ok_or_else(|| HeifError::Corrupt("the image grid has no tiles".into()))
        }
    }
}

/// A grid's picture, assembled from its tiles as they are decoded.
struct Canvas {
    yuv: Option<Yuv>,
    /// The size every tile must have: the first one's.
    tile: (usize, usize),
    columns: usize,
    rows: usize,
    size: (usize, usize),
}

impl Canvas {
    /// Pastes tile `i` (row-major); all tiles must be alike, whole chroma samples in size
    /// (MIAF), and cover the image.
    fn place(&mut self, i: usize, tile: Yuv) -> Result<(), HeifError> {
        let (w, h) = self.size;
        let yuv = self.yuv.get_or_insert_with(|| {
            self.tile = (tile.width, tile.height);
            tile.blank(w, h)
        });
        let (tw, th) = self.tile;
        let bad = |what: &str| Err(HeifError::Corrupt(format!("the grid's tiles {what}")));
        if tile.layout != yuv.layout
            || tile.depth != yuv.depth
            || (tile.width, tile.height) != (tw, th)
        {
            return bad("differ in kind or size");
        }
        let (sx, sy) = tile.layout.shifts();
        if tw % (1 << sx) != 0 || th % (1 << sy) != 0 {
            return bad("are not whole chroma samples wide and high");
        }
        if tw * self.columns < w || th * self.rows < h {
            return bad("do not cover the image");
        }
        yuv.paste(&tile, (i % self.columns) * tw, (i / self.columns) * th);
        Ok(())
    }
}

/// One rav1d decoding context.
struct Av1Decoder {
    context: Option<Dav1dContext>,
}

/// A picture rav1d handed out; released when dropped.
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture was filled in by `dav1d_get_picture` (or is the default,
        // empty one, which unref accepts) and is released only here.
        unsafe { dav1d_picture_unref(Some(NonNull::from(&mut self.0))) };
    }
}

/// A rav1d failure (a negated errno) in words.
fn av1_error(what: &str, code: i32) -> HeifError {
    let cause = match code.unsigned_abs() {
        12 => "out of memory".to_string(),
        22 => "invalid AV1 data".to_string(),
        34 => "a frame larger than the image declares".to_string(),
        92 => "an AV1 feature that is not supported".to_string(),
        n => format!("error {n}"),
    };
    HeifError::Corrupt(format!("AV1 {what} failed: {cause}"))
}

impl Av1Decoder {
    fn new(frame_limit: u32, operating_point: u8) -> Result<Self, HeifError> {
        let mut settings = std::mem::MaybeUninit::<Dav1dSettings>::uninit();
        // SAFETY: `dav1d_default_settings` writes every field of the settings it is given.
        let settings = unsafe {
            dav1d_default_settings(NonNull::from(&mut settings).cast());
            settings.assume_init_mut()
        };
        // One thread: still images gain little from more, and with several rav1d panics on
        // more kinds of damaged data (see `decode_avif_in_child_process`).
        settings.n_threads = 1;
        // Still images: one frame in flight, only the highest spatial layer shown.
        settings.max_frame_delay = 1;
        settings.all_layers = 0;
        settings.operating_point = operating_point.into();
        settings.frame_size_limit = frame_limit;
        // SAFETY: a logger of two null options is rav1d's "no logger"; damaged data is
        // reported through the errors returned, not printed.
        settings.logger = unsafe { std::mem::zeroed() };
        let mut context = None;
        // SAFETY: both pointers are to live locals; `settings` was initialised above.
        let res = unsafe {
            dav1d_open(
                Some(NonNull::from(&mut context)),
                Some(NonNull::from(&*settings)),
            )
        };
        if res.0 != 0 {
            return Err(av1_error("decoder setup", res.0));
        }
        Ok(Self { context })
    }

    /// Decodes one item: a temporal unit holding one frame (or the layers of one), whose
    /// sequence header must agree with its `av1C` (checked first: a damaged sequence
    /// header is a common way into rav1d's panics).
    fn decode(&mut self, bytes: &[u8], config: &Av1Config) -> Result<Yuv, HeifError> {
        if bytes.is_empty() {
            return Err(HeifError::Corrupt("an AV1 item is empty".into()));
        }
        check_sequence_header(bytes, config)?;
        let context = self.context;
        let mut data = Dav1dData::default();
        // SAFETY: `data` is a live, empty `Dav1dData`; the buffer returned holds
        // `bytes.len()` bytes and is owned by `data` until unref.
        let buffer = unsafe { dav1d_data_create(Some(NonNull::from(&mut data)), bytes.len()) };
        let Some(buffer) = NonNull::new(buffer) else {
            return Err(HeifError::Corrupt("an empty or oversized AV1 item".into()));
        };
        // SAFETY: `buffer` has room for `bytes.len()` bytes and does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.as_ptr(), bytes.len()) };
        let mut last: Option<Picture> = None;
        let sent = loop {
            // SAFETY: `context` is open; `data` is live.
            let res = unsafe { dav1d_send_data(context, Some(NonNull::from(&mut data))) };
            if res.0 == 0 || data.sz == 0 {
                break Ok(());
            }
            match self.next_picture() {
                Some(p) => last = Some(p),
                None => break Err(av1_error("decoding", res.0)),
            }
        };
        // SAFETY: `data` is live; unref releases what the decoder did not take.
        unsafe { dav1d_data_unref(Some(NonNull::from(&mut data))) };
        sent?;
        while let Some(p) = self.next_picture() {
            last = Some(p);
        }
        let picture = last.ok_or_else(|| {
            HeifError::Corrupt("the AV1 data holds no picture (truncated?)".into())
        })?;
        Ok(copy_planes(&picture.0))
    }

    fn next_picture(&mut self) -> Option<Picture> {
        let mut picture = Picture(Dav1dPicture::default());
        // SAFETY: `context` is open; the picture is a live default one to be filled in.
        let res = unsafe { dav1d_get_picture(self.context, Some(NonNull::from(&mut picture.0))) };
        (res.0 == 0).then_some(picture)
    }
}

impl Drop for Av1Decoder {
    fn drop(&mut self) {
        // SAFETY: the context came from `dav1d_open` and is closed only here.
        unsafe { dav1d_close(Some(NonNull::from(&mut self.context))) };
    }
}

/// Parses the sequence header in `bytes` and compares it with the item's `av1C`.
fn check_sequence_header(bytes: &[u8], config: &Av1Config) -> Result<(), HeifError> {
    let mut header = std::mem::MaybeUninit::<Dav1dSequenceHeader>::uninit();
    // SAFETY: `header` may be written to; the data pointer and length are of `bytes`,
    // which the function only reads.
    let res = unsafe {
        dav1d_parse_sequence_header(
            Some(NonNull::from(&mut header).cast()),
            NonNull::new(bytes.as_ptr().cast_mut()),
            bytes.len(),
        )
    };
    if res.0 != 0 {
        return Err(HeifError::Corrupt(
            "the AV1 data has no valid sequence header".into(),
        ));
    }
    // SAFETY: a successful parse wrote the whole header.
    let header = unsafe { header.assume_init() };
    if header.profile != config.profile
        || 8 + 2 * header.hbd != config.depth
        || Layout::of_dav1d(header.layout) != Layout::of_config(config)
    {
        return Err(HeifError::Corrupt(
            "the AV1 sequence header does not match the configuration ('av1C')".into(),
        ));
    }
    Ok(())
}

/// The samples and colour description of a rav1d picture.
fn copy_planes(p: &Dav1dPicture) -> Yuv {
    // SAFETY: a picture handed out by the decoder points at its sequence header.
    let header = p.seq_hdr.map(|h| unsafe { h.as_ref() });
    let mut yuv = Yuv {
        width: p.p.w as usize,
        height: p.p.h as usize,
        depth: p.p.bpc as u8,
        layout: Layout::of_dav1d(p.p.layout),
        planes: Default::default(),
        colour: Nclx {
            primaries: header.map_or(2, |h| h.pri as u16),
            transfer: header.map_or(2, |h| h.trc as u16),
            matrix: header.map_or(2, |h| h.mtrx as u16),
            full_range: header.is_some_and(|h| h.color_range != 0),
        },
    };
    let wide = yuv.depth > 8;
    for plane in 0..yuv.plane_count() {
        let (w, h) = yuv.plane_size(plane);
        let stride = p.stride[usize::from(plane > 0)] as usize;
        let Some(base) = p.data[plane] else { continue };
        let mut out = Vec::with_capacity(w * h);
        for row in 0..h {
            // SAFETY: rav1d allocates `stride` bytes per row for `h` rows of this plane,
            // and each row holds `w` samples of 1 (8-bit) or 2 bytes.
            unsafe {
                let start = base.as_ptr().cast::<u8>().add(row * stride);
                if wide {
                    let samples = std::slice::from_raw_parts(start.cast::<u16>(), w);
                    out.extend_from_slice(samples);
                } else {
                    out.extend(
                        std::slice::from_raw_parts(start, w)
                            .iter()
                            .map(|&v| u16::from(v)),
                    );
                }
            }
        }
        yuv.planes[plane] = out;
    }
    yuv
}

/// The program that decodes AVIF files in a child process, if one was set.
static CHILD_DECODER: OnceLock<PathBuf> = OnceLock::new();

/// The hidden subcommand of `program` that runs [`avif_child_main`].
pub const AVIF_CHILD_COMMAND: &str = "decode-avif";

/// Makes AVIF files be decoded by `program decode-avif FILE` in a child process. rav1d
/// panics on some damaged AV1 data, and a panic inside its C-ABI functions aborts the
/// process; in a child that is the one file's error. The command-line tool sets this to
/// itself; without it files are decoded in this process.
pub fn decode_avif_in_child_process(program: PathBuf) {
    let _ = CHILD_DECODER.set(program);
}

/// The child's side of [`decode_avif_in_child_process`]: decodes the AVIF `file` and writes its
/// samples, as `read_image` fills its buffer, to standard output. An error is one line on
/// standard error, "corrupt: …" or "unsupported: …", and exit status 1.
pub fn avif_child_main(file: &Path) -> std::process::ExitCode {
    let result = std::fs::read(file)
        .map_err(|e| HeifError::Corrupt(format!("cannot read the file: {e}")))
        .and_then(|data| AvifDecoder::new(&data)?.decode_here())
        .and_then(|img| {
            std::io::stdout()
                .lock()
                .write_all(img.as_bytes())
                .map_err(|e| HeifError::Corrupt(format!("cannot hand over the image: {e}")))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(HeifError::Corrupt(e)) => {
            eprintln!("corrupt: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(HeifError::Unsupported(e)) => {
            eprintln!("unsupported: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs [`avif_child_main`] in `program` on a temporary copy of `file`; returns the samples.
fn decode_in_child(program: &Path, file: &[u8]) -> Result<Vec<u8>, HeifError> {
    let failed = |what: String| HeifError::Corrupt(format!("AVIF decoding failed: {what}"));
    let mut copy = crate::fsutil::scratch_file().map_err(|e| failed(e.to_string()))?;
    copy.as_file_mut()
        .write_all(file)
        .map_err(|e| failed(e.to_string()))?;
    let out = std::process::Command::new(program)
        .arg(AVIF_CHILD_COMMAND)
        .arg(copy.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", program.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let message = String::from_utf8_lossy(&out.stderr);
    let line = message.lines().last().unwrap_or_default();
    Err(match (line.split_once(": "), out.status.code()) {
        (Some(("corrupt", e)), Some(1)) => HeifError::Corrupt(e.into()),
        (Some(("unsupported", e)), Some(1)) => HeifError::Unsupported(e.into()),
        _ => HeifError::Corrupt("the AV1 decoder failed on damaged data".into()),
    })
}

impl Codec for AvifDecoder<'_> {
    const NAME: &'static str = "AVIF";

    fn presentation(&self) -> &Presentation {
        &self.shown
    }

    fn is_sequence(&self) -> bool {
        self.heif.has_tracks
    }

    fn color_type(&self) -> ColorType {
        color_type(self.depth > 8, self.monochrome, self.alpha.is_some())
    }

    fn decode(self) -> Result<Vec<u8>, HeifError> {
        match CHILD_DECODER.get() {
            Some(program) => decode_in_child(program, self.heif.file()),
            None => Ok(self.decode_here()?.into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{format_fixture, limits};
    use crate::imageops::io::{decode_file, peek_file, DecodedImage, InputFormat};

    fn avif(name: &str) -> DecodedImage {
        decode_file(&format_fixture(&format!("avif/{name}")), &limits()).unwrap()
    }

    /// The largest difference of colour and of alpha, in 8-bit levels.
    fn max_diff(got: &DecodedImage, want: &DecodedImage) -> (f32, f32) {
        let alpha = match (&got.alpha, &want.alpha) {
            (Some(a), Some(b)) => a.max_abs_diff(b),
            (None, None) => 0.0,
            _ => panic!("alpha in one image only"),
        };
        (got.rgb.max_abs_diff(&want.rgb) * 255.0, alpha * 255.0)
    }

    /// Each file against libavif's decode of it. 8-bit references made by libavif's own
    /// floating-point conversion (16-bit PNGs, lossless files) are met within rounding;
    /// those made through libyuv's fixed-point code (8-bit PNGs of lossy files) within
    /// its known error: one level, two with bilinear chroma.
    #[test]
    fn decodes_as_libavif_does() {
        let cases = [
            ("rgb8_444", "rgb8_444.png", 1.01, false),
            ("rgb8_420", "rgb8_420.bilinear.d16.png", 0.51, false),
            ("rgb8_422", "rgb8_422.bilinear.d16.png", 0.51, false),
            ("gray8_400", "gray8_400.png", 0.0, false),
            ("rgb10_444", "rgb10_444.png", 0.01, true),
            ("rgb12_420", "rgb12_420.bilinear.png", 0.01, true),
            ("rgba8_444", "rgba8_444.png", 1.01, false),
            (
                "rgba8_premultiplied",
                "rgba8_premultiplied.d16.png",
                1.01,
                false,
            ),
            ("lossless_identity", "lossless_identity.png", 0.0, false),
            ("grid_2x2", "grid_2x2.bilinear.png", 2.01, false),
            ("bt2020_pq", "bt2020_pq.bilinear.png", 0.01, true),
            ("p3_derived_420", "p3_derived_420.bilinear.png", 0.01, true),
            ("anim", "anim.frame0.png", 1.01, false),
        ];
        for (name, reference, tolerance, sixteen) in cases {
            let got = avif(&format!("{name}.avif"));
            let want = avif(reference);
            let (colour, alpha) = max_diff(&got, &want);
            assert!(colour <= tolerance, "{name}: colour off by {colour} levels");
            assert_eq!(alpha, 0.0, "{name}: alpha");
            assert_eq!(got.sixteen_bit, sixteen, "{name}");
            assert_eq!(got.grayscale, name.starts_with("gray"), "{name}");
            assert_eq!(got.format, InputFormat::Avif);
        }
    }

    /// Clean aperture, rotation and mirroring, against the stored image with them applied.
    #[test]
    fn crop_rotation_and_mirror_are_applied() {
        for name in [
            "irot1",
            "imir0",
            "imir1",
            "irot1_imir0",
            "irot3_imir1",
            "clap",
            "exif",
            "exif_irot0",
        ] {
            let got = avif(&format!("{name}.avif"));
            let want = avif(&format!("{name}.oriented.png"));
            let tolerance = if name.starts_with("exif") { 1.01 } else { 0.0 };
            let (colour, _) = max_diff(&got, &want);
            assert!(colour <= tolerance, "{name}: off by {colour} levels");
            let peeked = peek_file(&format_fixture(&format!("avif/{name}.avif"))).unwrap();
            assert_eq!(peeked.format, InputFormat::Avif);
            assert_eq!(peeked.size, Some((got.rgb.height, got.rgb.width)), "{name}");
        }
    }

    #[test]
    fn metadata_is_kept() {
        // The profile is the one the PNG of the same image carries.
        let icc = avif("icc.avif").icc_profile.unwrap();
        assert_eq!(Some(icc), avif("icc.png").icc_profile);
        // Exif comes with its TIFF header, its orientation reset (irot has turned it).
        let exif = avif("exif.avif").exif.unwrap();
        assert!(exif.starts_with(b"MM\0*") || exif.starts_with(b"II*\0"));
        assert_eq!(crate::imageops::exif::upright(exif.clone()), Some(exif));
        // HDR: the H.273 code points go to PNG's cICP; sRGB-like ones are left out.
        let cicp = avif("bt2020_pq.avif").png_colour.cicp.unwrap();
        assert_eq!((cicp.color_primaries, cicp.transfer_function), (9, 16));
        assert_eq!(avif("rgb8_444.avif").png_colour, Default::default());
        assert!(avif("icc.avif").png_colour.cicp.is_none());
    }

    #[test]
    fn truncated_files_are_refused() {
        for name in ["truncated.avif", "truncated_mdat.avif"] {
            let e = decode_file(&format_fixture(&format!("avif/{name}")), &limits())
                .unwrap_err()
                .to_string();
            assert!(e.contains("truncated"), "{name}: {e}");
        }
    }

    /// The chromaticity-derived matrix of BT.709 and BT.2020 primaries is their own.
    #[test]
    fn luma_weights_follow_the_primaries() {
        for (primaries, want) in [(1, (0.2126, 0.0722)), (9, (0.2627, 0.0593))] {
            let (kr, kb) = luma_weights(primaries);
            assert!(
                (kr - want.0).abs() < 5e-4 && (kb - want.1).abs() < 5e-4,
                "{kr} {kb}"
            );
        }
        let nclx = |matrix| Nclx {
            primaries: 9,
            transfer: 16,
            matrix,
            full_range: false,
        };
        assert!(matches!(
            Matrix::of(nclx(12), Layout::I420),
            Ok(Matrix::Kr(..))
        ));
        let refused = |matrix, layout| match Matrix::of(nclx(matrix), layout) {
            Err(HeifError::Unsupported(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(14, Layout::I444), "the ICtCp YUV matrix");
        assert!(refused(0, Layout::I420).contains("identity (GBR)"));
    }

    fn tile(width: usize, height: usize, layout: Layout) -> Yuv {
        let blank = Yuv {
            width: 0,
            height: 0,
            depth: 8,
            layout,
            planes: Default::default(),
            colour: Nclx {
                primaries: 1,
                transfer: 13,
                matrix: 1,
                full_range: true,
            },
        };
        let mut t = blank.blank(width, height);
        t.planes[0].fill(7);
        t
    }

    /// Grid tiles must match the first in size, be whole chroma samples, and cover the
    /// image; what they cover beyond it is cut off.
    #[test]
    fn grid_tiles_are_checked_and_placed() {
        let canvas = |columns, rows, size| Canvas {
            yuv: None,
            tile: (0, 0),
            columns,
            rows,
            size,
        };
        let mut c = canvas(2, 1, (7, 4));
        c.place(0, tile(4, 4, Layout::I420)).unwrap();
        c.place(1, tile(4, 4, Layout::I420)).unwrap();
        let yuv = c.yuv.unwrap();
        assert_eq!((yuv.width, yuv.height, yuv.chroma_size()), (7, 4, (4, 2)));
        assert!(yuv.planes[0].iter().all(|&v| v == 7));
        let error = |columns, rows, size, tiles: &[Yuv]| {
            let mut c = canvas(columns, rows, size);
            tiles
                .iter()
                .enumerate()
                .try_for_each(|(i, t)| c.place(i, t.clone()))
                .unwrap_err()
        };
        let e = error(
            2,
            1,
            (8, 4),
            &[tile(4, 4, Layout::I420), tile(5, 4, Layout::I420)],
        );
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("differ")),
            "{e:?}"
        );
        let e = error(2, 1, (10, 4), &[tile(5, 4, Layout::I420)]);
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("chroma")),
            "{e:?}"
        );
        let e = error(2, 1, (9, 4), &[tile(4, 4, Layout::I444)]);
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("cover")),
            "{e:?}"
        );
        // Odd tiles are fine without subsampling.
        let mut c = canvas(2, 1, (10, 3));
        c.place(0, tile(5, 3, Layout::I444)).unwrap();
    }

    #[test]
    fn bilinear_neighbours_stay_inside() {
        // Luma 0 and the last odd column use their own chroma sample twice.
        assert_eq!(neighbours(0, 1, 3), (0, 0));
        assert_eq!(neighbours(1, 1, 3), (0, 1));
        assert_eq!(neighbours(2, 1, 3), (1, 0));
        assert_eq!(neighbours(5, 1, 3), (2, 2));
        assert_eq!(neighbours(4, 0, 5), (4, 4));
    }
}
