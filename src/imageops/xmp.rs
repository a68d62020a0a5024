//! Keeping a photo's XMP metadata (title, description, keywords, rights, rating, …) on its
//! upscale. As with EXIF, the properties the upscale makes untrue are rewritten: the
//! orientation (applied on decoding) becomes upright and the pixel dimensions become the
//! output's. Properties that describe something the output does not have are left out:
//! the source file's storage layout (`tiff:BitsPerSample`, …) and the digests of its native
//! tags; Camera Raw develop settings, which an editor would apply to the rendered pixels a
//! second time; and the gain maps, depth maps, motion-photo videos and extended packets that
//! phones append to a file and describe in its XMP, which the output does not carry. The
//! rest is written back as it was read.

use std::borrow::Cow;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;
use quick_xml::writer::Writer;

/// What opens a JPEG APP1 segment holding an XMP packet.
pub const JPEG_SIGNATURE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// The PNG iTXt keyword of an XMP packet.
pub const PNG_KEYWORD: &str = "XML:com.adobe.xmp";

const TIFF: &[u8] = b"http://ns.adobe.com/tiff/1.0/";
const EXIF: &[u8] = b"http://ns.adobe.com/exif/1.0/";
const XMP_NOTE: &[u8] = b"http://ns.adobe.com/xmp/note/";

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

/// What becomes of one property.
enum Fate {
    Keep,
    Set(String),
    LeaveOut,
}

fn fate(namespace: &ResolveResult, local: &[u8], width: u32, height: u32) -> Fate {
    let ResolveResult::Bound(Namespace(ns)) = namespace else {
        return Fate::Keep;
    };
    match (*ns, local) {
        (TIFF, b"Orientation") => Fate::Set("1".into()),
        (TIFF, b"ImageWidth") | (EXIF, b"PixelXDimension") => Fate::Set(width.to_string()),
        (TIFF, b"ImageLength") | (EXIF, b"PixelYDimension") => Fate::Set(height.to_string()),
        (TIFF, name) if STORAGE.contains(&name) => Fate::LeaveOut,
        (EXIF, b"NativeDigest") | (XMP_NOTE, b"HasExtendedXMP") => Fate::LeaveOut,
        (ns, _) if LEFT_OUT.contains(&ns) => Fate::LeaveOut,
        _ => Fate::Keep,
    }
}

/// The packet as it should be written with an upright `width`×`height` image; `None`
/// where it is not well-formed UTF-8 XML, which no reader could use.
pub fn for_output(packet: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(packet).ok()?;
    let mut reader = NsReader::from_str(text);
    let mut writer = Writer::new(Vec::with_capacity(packet.len()));
    let mut depth = 0usize;
    // Inside a property that is left out: how many of its elements are open.
    let mut skipping = 0usize;
    // Inside a property whose value is replaced: the value.
    let mut replacing: Option<String> = None;
    loop {
        let (namespace, event) = reader.read_resolved_event().ok()?;
        let fate = match &event {
            Event::Start(e) | Event::Empty(e) => {
                fate(&namespace, e.local_name().as_ref(), width, height)
            }
            _ => Fate::Keep,
        };
        match event {
            Event::Eof => break,
            Event::Start(_) if skipping > 0 => {
                depth += 1;
                skipping += 1;
            }
            Event::End(_) if skipping > 0 => {
                depth -= 1;
                skipping -= 1;
            }
            _ if skipping > 0 => {}
            Event::Start(_) if matches!(fate, Fate::LeaveOut) => {
                depth += 1;
                skipping = 1;
            }
            Event::Empty(_) if matches!(fate, Fate::LeaveOut) => {}
            Event::Start(e) => {
                depth += 1;
                if let Fate::Set(value) = fate {
                    replacing = Some(value);
                }
                let e = with_attributes(&reader, e, width, height)?;
                writer.write_event(Event::Start(e)).ok()?;
            }
            Event::Empty(e) => {
                let e = with_attributes(&reader, e, width, height)?;
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
    (depth == 0).then(|| wrapped(writer.into_inner()))
}

/// The packet inside the `xpacket` processing instructions the XMP specification asks
/// files to have, where it lacks them (and no XML declaration must come first).
fn wrapped(packet: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&packet);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with("<?xpacket") || text.starts_with("<?xml") {
        return packet;
    }
    let mut out = "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
        .as_bytes()
        .to_vec();
    out.extend_from_slice(&packet);
    out.extend_from_slice(b"<?xpacket end=\"w\"?>");
    out
}

/// The element with its attribute-form properties rewritten or left out (unchanged, raw,
/// where none is).
fn with_attributes(
    reader: &NsReader<&[u8]>,
    e: BytesStart<'_>,
    width: u32,
    height: u32,
) -> Option<BytesStart<'static>> {
    let mut changed = false;
    let mut kept = Vec::new();
    for attribute in e.attributes() {
        let attribute = attribute.ok()?;
        let (namespace, local) = reader.resolve_attribute(attribute.key);
        let value = match fate(&namespace, local.as_ref(), width, height) {
            Fate::Keep => attribute.unescape_value().ok()?,
            Fate::Set(value) => {
                changed = true;
                Cow::Owned(value)
            }
            Fate::LeaveOut => {
                changed = true;
                continue;
            }
        };
        kept.push((attribute.key, value));
    }
    if !changed {
        return Some(e.into_owned());
    }
    let name = std::str::from_utf8(e.name().as_ref()).ok()?.to_owned();
    let mut out = BytesStart::new(name);
    for (key, value) in kept {
        let key = std::str::from_utf8(key.as_ref()).ok()?;
        out.push_attribute(Attribute::from((key, value.as_ref())));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(packet: &str) -> String {
        String::from_utf8(for_output(packet.as_bytes(), 640, 480).expect("well-formed")).unwrap()
    }

    const HEAD: &str = r#"<?xpacket begin="\u{feff}" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">"#;
    const TAIL: &str = r#"</rdf:RDF></x:xmpmeta><?xpacket end="w"?>"#;

    #[test]
    fn attribute_properties_are_rewritten_and_the_rest_kept_as_read() {
        let packet = format!(
            r#"{HEAD}<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" tiff:ImageWidth="4000" tiff:ImageLength='3000' exif:PixelXDimension="4000" exif:PixelYDimension="3000" tiff:BitsPerSample="8" crs:Exposure2012="+0.50" tiff:Make="A &amp; B"><dc:title><rdf:Alt><rdf:li xml:lang="x-default">Caf&#233; &lt;night&gt;</rdf:li></rdf:Alt></dc:title></rdf:Description>{TAIL}"#
        );
        let out = rewrite(&packet);
        for want in [
            r#"tiff:Orientation="1""#,
            r#"tiff:ImageWidth="640""#,
            r#"tiff:ImageLength="480""#,
            r#"exif:PixelXDimension="640""#,
            r#"exif:PixelYDimension="480""#,
            r#"tiff:Make="A &amp; B""#,
            r#"xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/""#,
            "Caf&#233; &lt;night&gt;",
            r#"<?xpacket end="w"?>"#,
        ] {
            assert!(out.contains(want), "{want} missing from {out}");
        }
        for gone in ["BitsPerSample", "Exposure2012", "4000", "3000"] {
            assert!(!out.contains(gone), "{gone} kept in {out}");
        }
        // Nothing to change: the packet comes back byte for byte.
        let plain = format!(
            r#"{HEAD}<rdf:Description rdf:about=""  xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/png"/>{TAIL}"#
        );
        assert_eq!(rewrite(&plain), plain);
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
        let out = rewrite(&packet);
        // The prefix does not matter, the namespace does.
        assert!(
            out.contains(
                "<t:Orientation xmlns:t=\"http://ns.adobe.com/tiff/1.0/\">1</t:Orientation>"
            ),
            "{out}"
        );
        assert!(out.contains(">640</exif:PixelXDimension>"), "{out}");
        assert!(out.contains(r#"<tiff:Orientation xmlns:tiff="http://example.com/not-tiff/">8</tiff:Orientation>"#), "{out}");
        for gone in ["Directory", "Item:Mime", "HasExtendedXMP", "4032"] {
            assert!(!out.contains(gone), "{gone} kept in {out}");
        }
        assert!(
            for_output(out.as_bytes(), 1, 1).is_some(),
            "the result is well-formed"
        );
    }

    #[test]
    fn a_packet_without_its_wrapper_gets_one() {
        let bare = r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"/>"#;
        let out = rewrite(bare);
        assert_eq!(
            out,
            format!("<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>{bare}<?xpacket end=\"w\"?>")
        );
        assert_eq!(rewrite(&out), out);
        let declared = format!("<?xml version=\"1.0\"?>{bare}");
        assert_eq!(rewrite(&declared), declared);
    }

    #[test]
    fn packets_that_are_not_xml_are_refused() {
        for broken in [
            &b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><a></b></x:xmpmeta>"[..],
            b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><a>",
            b"<a>\xff\xfe</a>",
            b"<a b=\"1\" b=\"2\"/>",
        ] {
            assert!(
                for_output(broken, 1, 1).is_none(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
