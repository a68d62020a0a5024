//! Keeping a photo's XMP metadata (title, description, keywords, rights, rating, …) on its
//! upscale. As with EXIF, the properties the upscale makes untrue are rewritten: an
//! orientation that decoding applied becomes upright ([`upright`]), and the pixel
//! dimensions become the output's ([`for_output`]). Properties that describe something the
//! output does not have are left out: the source file's storage layout
//! (`tiff:BitsPerSample`, `photoshop:ColorMode`, …) and the digests of its native tags;
//! Camera Raw develop settings, which an editor would apply to the rendered pixels a
//! second time; and the gain maps, depth maps, motion-photo videos and extended packets
//! that phones append to a file and describe in its XMP, which the output does not carry.
//! Only the image's own properties are touched (those of the `rdf:Description`s directly
//! under `rdf:RDF`), not those of the documents a packet may describe inside them. The
//! rest is written back as it was read.

use std::borrow::Cow;

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};
use quick_xml::reader::NsReader;
use quick_xml::writer::Writer;

/// What opens a JPEG APP1 segment holding an XMP packet.
pub const JPEG_SIGNATURE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// The PNG iTXt keyword of an XMP packet.
pub const PNG_KEYWORD: &str = "XML:com.adobe.xmp";

const RDF: &[u8] = b"http://www.w3.org/1999/02/22-rdf-syntax-ns#";
const TIFF: &[u8] = b"http://ns.adobe.com/tiff/1.0/";
const EXIF: &[u8] = b"http://ns.adobe.com/exif/1.0/";
const XMP_NOTE: &[u8] = b"http://ns.adobe.com/xmp/note/";
const PHOTOSHOP: &[u8] = b"http://ns.adobe.com/photoshop/1.0/";

/// Namespaces whose properties describe data the output does not carry.
const LEFT_OUT: [&[u8]; 8] = [
    b"http://ns.adobe.com/camera-raw-settings/1.0/",
    b"http://ns.adobe.com/hdr-gain-map/1.0/",
    b"http://ns.apple.com/HDRGainMap/1.0/",
    b"http://ns.google.com/photos/1.0/container/",
    b"http://ns.google.com/photos/1.0/container/item/",
    b"http://ns.google.com/photos/1.0/camera/",
    b"http://ns.google.com/photos/1.0/depthmap/",
    b"http://ns.google.com/photos/1.0/image/",
];

/// `tiff:` properties that describe how the source file stored its samples.
const STORAGE: [&[u8]; 9] = [
    b"BitsPerSample",
    b"Compression",
    b"PhotometricInterpretation",
    b"SamplesPerPixel",
    b"PlanarConfiguration",
    b"YCbCrSubSampling",
    b"YCbCrPositioning",
    b"YCbCrCoefficients",
    b"NativeDigest",
];

/// Whether the packet is well-formed XMP that [`upright`] and [`for_output`] can rewrite.
pub fn is_well_formed(packet: &[u8]) -> bool {
    rewrite(packet, Edit::Upright).is_some()
}

/// The packet with its orientation set to upright, for a decoder that has turned the
/// pixels by the file's orientation; `None` where it is not a well-formed XMP packet.
pub fn upright(packet: &[u8]) -> Option<Vec<u8>> {
    rewrite(packet, Edit::Upright)
}

/// The packet as it should be written with a `width`×`height` image, wrapped as the XMP
/// specification asks; `None` where it is not a well-formed XMP packet, which no reader
/// could use.
pub fn for_output(packet: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    rewrite(packet, Edit::Output { width, height }).map(wrapped)
}

/// What a rewrite changes.
#[derive(Clone, Copy)]
enum Edit {
    Upright,
    Output { width: u32, height: u32 },
}

/// What becomes of one of the image's properties.
enum Fate {
    Keep,
    Set(String),
    LeaveOut,
}

impl Edit {
    fn fate(self, namespace: &ResolveResult, local: &[u8]) -> Fate {
        let ResolveResult::Bound(Namespace(ns)) = namespace else {
            return Fate::Keep;
        };
        match (self, *ns, local) {
            (Edit::Upright, TIFF, b"Orientation") => Fate::Set("1".into()),
            (Edit::Upright, ..) => Fate::Keep,
            (Edit::Output { width, .. }, TIFF, b"ImageWidth")
            | (Edit::Output { width, .. }, EXIF, b"PixelXDimension") => {
                Fate::Set(width.to_string())
            }
            (Edit::Output { height, .. }, TIFF, b"ImageLength")
            | (Edit::Output { height, .. }, EXIF, b"PixelYDimension") => {
                Fate::Set(height.to_string())
            }
            (_, TIFF, name) if STORAGE.contains(&name) => Fate::LeaveOut,
            (_, EXIF, b"NativeDigest")
            | (_, XMP_NOTE, b"HasExtendedXMP")
            | (_, PHOTOSHOP, b"ColorMode" | b"ICCProfileName") => Fate::LeaveOut,
            (_, ns, _) if LEFT_OUT.contains(&ns) => Fate::LeaveOut,
            _ => Fate::Keep,
        }
    }
}

/// Rewrites the image's properties by `edit`, checking on the way that the packet is
/// well-formed UTF-8 XML with one root element (which quick-xml alone does not check).
fn rewrite(packet: &[u8], edit: Edit) -> Option<Vec<u8>> {
    // TIFF writers often pad the tag's packet with NULs.
    let end = packet.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&packet[..end]).ok()?;
    let mut reader = NsReader::from_str(text);
    let mut writer = Writer::new(Vec::with_capacity(packet.len()));
    let mut depth = 0usize;
    let mut roots = 0usize;
    // The depth of `rdf:RDF`: the image's descriptions lie one below, their properties two.
    let mut rdf = None;
    // Inside a property that is left out: how many of its elements are open.
    let mut skipping = 0usize;
    // Inside a property whose value is replaced: the value.
    let mut replacing: Option<String> = None;
    loop {
        let (namespace, event) = reader.read_resolved_event().ok()?;
        let level = depth + 1;
        let (fate, description) = match &event {
            Event::Start(e) | Event::Empty(e) => {
                let local = e.local_name();
                let is_rdf = |name: &[u8]| {
                    matches!(namespace, ResolveResult::Bound(Namespace(RDF)))
                        && local.as_ref() == name
                };
                if rdf.is_none() && is_rdf(b"RDF") {
                    rdf = Some(level);
                }
                let fate = match rdf {
                    Some(r) if level == r + 2 => edit.fate(&namespace, local.as_ref()),
                    _ => Fate::Keep,
                };
                (
                    fate,
                    rdf.is_some_and(|r| level == r + 1) && is_rdf(b"Description"),
                )
            }
            _ => (Fate::Keep, false),
        };
        if depth == 0 {
            match &event {
                Event::Start(_) | Event::Empty(_) => roots += 1,
                Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => return None,
                _ => {}
            }
        }
        if let Event::GeneralRef(r) = &event {
            // Only the predefined entities and character references: XMP declares none.
            let known = r.is_char_ref() || resolve_predefined_entity(&r.decode().ok()?).is_some();
            if !known || r.resolve_char_ref().is_err() {
                return None;
            }
        }
        match event {
            Event::Eof => break,
            // A property left out, and everything in it: checked, not written.
            Event::Start(e) if skipping > 0 || matches!(fate, Fate::LeaveOut) => {
                attributes(&reader, &e, None)?;
                depth += 1;
                skipping += 1;
            }
            Event::Empty(e) if skipping > 0 || matches!(fate, Fate::LeaveOut) => {
                attributes(&reader, &e, None)?;
            }
            Event::End(_) if skipping > 0 => {
                depth -= 1;
                skipping -= 1;
            }
            _ if skipping > 0 => {}
            Event::Start(e) => {
                depth += 1;
                if let Fate::Set(value) = fate {
                    replacing = Some(value);
                }
                let e = attributes(&reader, &e, description.then_some(edit))?;
                writer.write_event(Event::Start(e)).ok()?;
            }
            Event::Empty(e) => {
                let e = attributes(&reader, &e, description.then_some(edit))?;
                writer.write_event(Event::Empty(e)).ok()?;
            }
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if replacing.is_some() => {}
            Event::End(e) => {
                depth = depth.checked_sub(1)?;
                if let Some(value) = replacing.take() {
                    writer
                        .write_event(Event::Text(BytesText::new(&value)))
                        .ok()?;
                }
                writer.write_event(Event::End(e)).ok()?;
            }
            event => writer.write_event(event).ok()?,
        }
    }
    (depth == 0 && roots == 1).then(|| writer.into_inner())
}

/// The element with its attributes checked (values that do not unescape make the packet
/// unusable) and, where `edit` is given (on the image's descriptions), its attribute-form
/// properties rewritten or left out; unchanged, raw, where none is.
fn attributes(
    reader: &NsReader<&[u8]>,
    e: &BytesStart<'_>,
    edit: Option<Edit>,
) -> Option<BytesStart<'static>> {
    let mut changed = false;
    let mut kept = Vec::new();
    for attribute in e.attributes() {
        let attribute = attribute.ok()?;
        let mut value = attribute.unescape_value().ok()?;
        if let Some(edit) = edit {
            let (namespace, local) = reader.resolve_attribute(attribute.key);
            match edit.fate(&namespace, local.as_ref()) {
                Fate::Keep => {}
                Fate::Set(v) => {
                    changed = true;
                    value = Cow::Owned(v);
                }
                Fate::LeaveOut => {
                    changed = true;
                    continue;
                }
            }
        }
        kept.push((attribute.key, value));
    }
    if !changed {
        return Some(e.clone().into_owned());
    }
    let name = std::str::from_utf8(e.name().as_ref()).ok()?.to_owned();
    let mut out = BytesStart::new(name);
    for (QName(key), value) in kept {
        out.push_attribute(Attribute {
            key: QName(key),
            value: Cow::Owned(attribute_value(&value).into_bytes()),
        });
    }
    Some(out)
}

/// `value` escaped for a double-quoted attribute, line breaks and tabs as character
/// references, which a parser would otherwise read back as spaces.
fn attribute_value(value: &str) -> String {
    escape(value)
        .replace('\n', "&#xA;")
        .replace('\r', "&#xD;")
        .replace('\t', "&#x9;")
}

/// The packet inside the `xpacket` processing instructions the XMP specification asks
/// files to have, where it lacks them (an XML declaration, which would have to come first,
/// is dropped: XMP is UTF-8 XML 1.0, which is what it declares).
fn wrapped(packet: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&packet);
    let start = text.trim_start_matches('\u{feff}').trim_start();
    let declaration = start
        .strip_prefix("<?xml")
        .filter(|rest| rest.starts_with(char::is_whitespace));
    let body = match declaration {
        Some(rest) => rest
            .split_once("?>")
            .map_or("", |(_, body)| body.trim_start()),
        None => start,
    };
    if body.starts_with("<?xpacket") {
        return match declaration {
            Some(_) => body.as_bytes().to_vec(),
            None => packet,
        };
    }
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>{}<?xpacket end=\"w\"?>",
        body.trim_start()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(packet: &str) -> String {
        String::from_utf8(for_output(packet.as_bytes(), 640, 480).expect("well-formed")).unwrap()
    }

    fn turned(packet: &str) -> String {
        String::from_utf8(upright(packet.as_bytes()).expect("well-formed")).unwrap()
    }

    const HEAD: &str = r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">"#;
    const TAIL: &str = r#"</rdf:RDF></x:xmpmeta><?xpacket end="w"?>"#;

    #[test]
    fn attribute_properties_are_rewritten_and_the_rest_kept_as_read() {
        let packet = format!(
            r#"{HEAD}<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" tiff:ImageWidth="4000" tiff:ImageLength='3000' exif:PixelXDimension="4000" exif:PixelYDimension="3000" tiff:BitsPerSample="8" crs:Exposure2012="+0.50" photoshop:ColorMode="4" tiff:Make="A &amp; B" photoshop:Instructions="one&#xA;two&#xD;&#xA;three&#x9;tab"><dc:title><rdf:Alt><rdf:li xml:lang="x-default">Caf&#233; &lt;night&gt;</rdf:li></rdf:Alt></dc:title></rdf:Description>{TAIL}"#
        );
        let out = output(&packet);
        for want in [
            r#"tiff:Orientation="6""#,
            r#"tiff:ImageWidth="640""#,
            r#"tiff:ImageLength="480""#,
            r#"exif:PixelXDimension="640""#,
            r#"exif:PixelYDimension="480""#,
            r#"tiff:Make="A &amp; B""#,
            // Line breaks and tabs stay characters, not the spaces a parser makes of raw ones.
            r#"photoshop:Instructions="one&#xA;two&#xD;&#xA;three&#x9;tab""#,
            r#"xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/""#,
            "Caf&#233; &lt;night&gt;",
            r#"<?xpacket end="w"?>"#,
        ] {
            assert!(out.contains(want), "{want} missing from {out}");
        }
        for gone in ["BitsPerSample", "Exposure2012", "ColorMode", "4000", "3000"] {
            assert!(!out.contains(gone), "{gone} kept in {out}");
        }
        let up = turned(&packet);
        assert!(
            up.contains(r#"tiff:Orientation="1" tiff:ImageWidth="4000""#),
            "{up}"
        );
        // Nothing to change: the packet comes back byte for byte.
        let plain = format!(
            r#"{HEAD}<rdf:Description rdf:about=""  xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/png"/>{TAIL}"#
        );
        assert_eq!(output(&plain), plain);
        assert_eq!(turned(&plain), plain);
    }

    #[test]
    fn element_properties_are_rewritten_and_described_extras_left_out() {
        let packet = format!(
            r#"{HEAD}<rdf:Description rdf:about="">
  <t:Orientation xmlns:t="http://ns.adobe.com/tiff/1.0/">8</t:Orientation>
  <exif:PixelXDimension xmlns:exif="http://ns.adobe.com/exif/1.0/">4032</exif:PixelXDimension>
  <GContainer:Directory xmlns:GContainer="http://ns.google.com/photos/1.0/container/"><rdf:Seq><rdf:li rdf:parseType="Resource"><Container:Item xmlns:Container="http://ns.google.com/photos/1.0/container/" Item:Mime="image/jpeg" xmlns:Item="http://ns.google.com/photos/1.0/container/item/"/></rdf:li></rdf:Seq></GContainer:Directory>
  <xmpNote:HasExtendedXMP xmlns:xmpNote="http://ns.adobe.com/xmp/note/">ABC</xmpNote:HasExtendedXMP>
  <tiff:Orientation xmlns:tiff="http://example.com/not-tiff/">8</tiff:Orientation>
</rdf:Description>{TAIL}"#
        );
        // The prefix does not matter, the namespace does.
        let up = turned(&packet);
        assert!(
            up.contains(
                r#"<t:Orientation xmlns:t="http://ns.adobe.com/tiff/1.0/">1</t:Orientation>"#
            ),
            "{up}"
        );
        let out = output(&up);
        assert!(out.contains(">640</exif:PixelXDimension>"), "{out}");
        assert!(
            out.contains(r#"<tiff:Orientation xmlns:tiff="http://example.com/not-tiff/">8</tiff:Orientation>"#),
            "{out}"
        );
        for gone in ["Directory", "Item:Mime", "HasExtendedXMP", "4032"] {
            assert!(!out.contains(gone), "{gone} kept in {out}");
        }
        assert!(
            for_output(out.as_bytes(), 1, 1).is_some(),
            "the result is well-formed"
        );
    }

    /// The properties of documents a packet describes inside the image's (a pantry, a
    /// history) are theirs, not the output's.
    #[test]
    fn nested_descriptions_are_left_alone() {
        let packet = format!(
            r#"{HEAD}<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" tiff:Orientation="6"><xmpMM:Pantry><rdf:Bag><rdf:li><rdf:Description tiff:Orientation="8" tiff:ImageWidth="1920" tiff:BitsPerSample="16"/></rdf:li></rdf:Bag></xmpMM:Pantry></rdf:Description>{TAIL}"#
        );
        let out = output(&turned(&packet));
        assert!(out.contains(r#"tiff:Orientation="1">"#), "{out}");
        assert!(
            out.contains(r#"<rdf:Description tiff:Orientation="8" tiff:ImageWidth="1920" tiff:BitsPerSample="16"/>"#),
            "{out}"
        );
    }

    #[test]
    fn a_packet_without_its_wrapper_gets_one() {
        let bare = r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"/>"#;
        let out = output(bare);
        assert_eq!(
            out,
            format!("<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>{bare}<?xpacket end=\"w\"?>")
        );
        assert_eq!(output(&out), out);
        // An XML declaration would have to come first: it goes.
        assert_eq!(output(&format!("<?xml version=\"1.0\"?>\n{bare}")), out);
        assert_eq!(output(&format!("<?xml version=\"1.0\"?>{out}")), out);
    }

    #[test]
    fn packets_that_are_not_xml_are_refused() {
        for broken in [
            &b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><a></b></x:xmpmeta>"[..],
            b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><a>",
            b"<a>\xff\xfe</a>",
            b"<a b=\"1\" b=\"2\"/>",
            b"",
            b"  \0\0",
            b"<a>x &nbsp; y</a>",
            b"<a b=\"&nbsp;\"/>",
            b"<a>&#0;</a>",
            b"<a/><b/>",
            b"junk <a/>",
            b"<a/> junk",
        ] {
            assert!(
                for_output(broken, 1, 1).is_none()
                    && upright(broken).is_none()
                    && !is_well_formed(broken),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
        // The NULs TIFF writers pad the tag with are not part of it.
        assert_eq!(
            for_output(b"<a>&amp;&#x41;</a>\0\0", 1, 1)
                .map(|p| p.ends_with(b"<?xpacket end=\"w\"?>")),
            Some(true)
        );
    }
}
