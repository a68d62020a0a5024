//! Which items make up a HEIF image's picture: one coded item or a grid of them, and the
//! alpha picture that goes with it.

use super::{name, FourCc, Grid, Heif, HeifError, Property};

/// The `auxC` types that mark an auxiliary image as alpha (MPEG's, and the older HEVC one).
const ALPHA_URNS: [&str; 2] = [
    "urn:mpeg:mpegB:cicp:systems:auxiliary:alpha",
    "urn:mpeg:hevc:2015:auxid:1",
];

/// A codec's item type and name, e.g. `av01` and AV1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::imageops::io) struct Coding {
    pub item: FourCc,
    pub name: &'static str,
}

/// Where a picture comes from: one coded item, or a grid of them.
#[derive(Debug, Clone)]
pub(in crate::imageops::io) enum Source {
    Single(u32),
    Grid(Grid),
}

impl Source {
    /// The picture item `id` shows: an item coded by `coding`, or a grid of such items.
    pub fn of(heif: &Heif, id: u32, coding: Coding) -> Result<Self, HeifError> {
        let item = heif.item(id)?;
        match &item.kind {
            kind if *kind == coding.item => Ok(Self::Single(id)),
            b"grid" => {
                let grid = heif.grid(id)?;
                for &t in &grid.tiles {
                    if heif.item(t)?.kind != coding.item {
                        return Err(HeifError::Unsupported(format!(
                            "a grid of non-{} tiles",
                            coding.name
                        )));
                    }
                }
                Ok(Self::Grid(grid))
            }
            kind => {
                let coded = match kind {
                    b"av01" => " (AV1)",
                    b"hvc1" => " (HEVC)",
                    b"avc1" => " (H.264)",
                    b"vvc1" => " (H.266)",
                    b"jpeg" => " (JPEG)",
                    b"j2k1" => " (JPEG 2000)",
                    b"unci" => " (uncompressed)",
                    _ => "",
                };
                Err(HeifError::Unsupported(format!(
                    "a primary image of type '{}'{coded}",
                    name(kind).trim_end_matches(' ')
                )))
            }
        }
    }

    /// The first coded item: the only one, or a grid's first tile.
    pub fn first(&self) -> u32 {
        match self {
            Self::Single(id) => *id,
            Self::Grid(grid) => grid.tiles[0],
        }
    }

    /// The size as stored (`ispe` of an item; a grid's own size).
    pub fn stored_size(&self, heif: &Heif) -> Result<(usize, usize), HeifError> {
        let (w, h) = match self {
            Self::Single(id) => heif
                .properties(*id)?
                .into_iter()
                .find_map(|(p, _)| match *p {
                    Property::Extents(w, h) => Some((w as usize, h as usize)),
                    _ => None,
                })
                .ok_or_else(|| HeifError::Corrupt("the image has no size ('ispe')".into()))?,
            Self::Grid(grid) => (grid.width, grid.height),
        };
        if w == 0 || h == 0 {
            return Err(HeifError::Corrupt(format!("the image is {w}x{h}")));
        }
        Ok((w, h))
    }
}

/// The alpha picture of the primary item, of its `stored` size, if there is one; and
/// whether the colour is premultiplied by it (`prem`).
pub(in crate::imageops::io) fn find_alpha(
    heif: &Heif,
    coding: Coding,
    stored: (usize, usize),
) -> Result<Option<(Source, bool)>, HeifError> {
    let primary = heif.primary;
    for id in heif.references_to(primary, b"auxl") {
        let is_alpha = heif
            .properties(id)?
            .iter()
            .any(|(p, _)| matches!(p, Property::AuxType(t) if ALPHA_URNS.contains(&t.as_str())));
        if !is_alpha {
            continue;
        }
        let alpha = Source::of(heif, id, coding)?;
        if alpha.stored_size(heif)? != stored {
            return Err(HeifError::Corrupt(
                "the alpha image's size differs from the colour image's".into(),
            ));
        }
        let premultiplied = heif.references_from(primary, b"prem").contains(&id);
        return Ok(Some((alpha, premultiplied)));
    }
    Ok(None)
}
