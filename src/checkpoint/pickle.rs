//! Pickles of protocol 3 to 5 (`torch.save(..., pickle_protocol=4)`, or checkpoints holding
//! `bytes`) rewritten into the protocol-2 opcodes candle's reader takes. The rewrite is a
//! single pass over the opcode stream that, like the reader, treats it as data: nothing is
//! imported or called.
//!
//! What protocol 4 adds is mostly spelling: frames (dropped), short and 8-byte string
//! lengths (widened or narrowed to BINUNICODE), MEMOIZE (an explicit LONG_BINPUT) and
//! STACK_GLOBAL, which takes module and name from the stack where GLOBAL has them inline.
//! To fold a STACK_GLOBAL into a GLOBAL its two strings must still be at the end of the
//! output, so memoised strings are never put in the memo: they are remembered here and
//! written out again wherever they are fetched. Sets become lists and bytes become a
//! placeholder string: neither is a tensor, and only tensors are read from a checkpoint.

use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashMap;

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const BINBYTES8: u8 = 0x8e;
const BYTEARRAY8: u8 = 0x96;
const MEMOIZE: u8 = 0x94;
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const EMPTY_LIST: u8 = b']';
const APPENDS: u8 = b'e';
const TUPLE: u8 = b't';
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const LONG1: u8 = 0x8a;
const STOP: u8 = b'.';

/// Opcodes candle reads that are copied as they are, with the length of their argument.
const COPIED: [(u8, usize); 25] = [
    (b')', 0),
    (b'R', 0),
    (b'(', 0),
    (b'J', 4),
    (b't', 0),
    (b'Q', 0),
    (b'K', 1),
    (b'M', 2),
    (0x85, 0),
    (0x86, 0),
    (0x87, 0),
    (0x88, 0),
    (0x89, 0),
    (b'N', 0),
    (b's', 0),
    (b'u', 0),
    (b'}', 0),
    (b'd', 0),
    (b'b', 0),
    (0x81, 0),
    (b']', 0),
    (b'G', 8),
    (b'a', 0),
    (b'e', 0),
    (b'.', 0),
];

/// `bytes` as it goes to candle when it is not protocol 2 already.
pub(super) fn to_protocol_2(pickle: &[u8]) -> Result<Cow<'_, [u8]>> {
    match pickle {
        [PROTO, protocol @ 3..=5, ..] => Rewrite::new(pickle)
            .run()
            .with_context(|| format!("cannot read this protocol-{protocol} pickle"))
            .map(Cow::Owned),
        [PROTO, protocol, ..] if *protocol > 5 => {
            bail!("pickle protocol {protocol} is newer than any Python writes (5)")
        }
        _ => Ok(Cow::Borrowed(pickle)),
    }
}

/// The most objects reading a pickle may build, memo copies included. candle's reader
/// copies a memoised object at every fetch, so a few hundred bytes of shared references
/// would otherwise expand to billions of objects; a checkpoint of 10,000 tensors builds
/// about a million.
const MAX_OBJECTS: u64 = 1 << 22;

/// The most bytes of strings reading a pickle may copy, beyond its own size: memoised
/// strings are copied at every fetch too.
const MAX_COPIED_BYTES: u64 = 64 << 20;

/// The deepest nesting of objects. Checkpoints nest a few levels; candle builds and drops
/// objects recursively, and a million levels overflow the stack.
const MAX_DEPTH: u32 = 1000;

/// An entry of [`check_expansion`]'s stack: the size (objects and string bytes) and depth
/// of the object candle's reader would hold there, or a mark.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Mark,
    Object {
        objects: u64,
        bytes: u64,
        depth: u32,
    },
}

impl Shape {
    /// A string of `bytes` bytes, or (0) another object that holds none.
    fn leaf(bytes: u64) -> Shape {
        Shape::Object {
            objects: 1,
            bytes,
            depth: 1,
        }
    }

    /// The object made of `parts` (a mark counts for nothing).
    fn holding(parts: &[Shape]) -> Shape {
        parts
            .iter()
            .fold(Shape::leaf(0), |whole, part| whole.with(*part))
    }

    /// How many objects and string bytes it holds, itself included.
    fn size(self) -> (u64, u64) {
        match self {
            Shape::Mark => (0, 0),
            Shape::Object { objects, bytes, .. } => (objects, bytes),
        }
    }

    /// `self` with `part` put into it.
    fn with(self, part: Shape) -> Shape {
        match (self, part) {
            (
                Shape::Object {
                    objects,
                    bytes,
                    depth,
                },
                Shape::Object {
                    objects: more,
                    bytes: more_bytes,
                    depth: below,
                },
            ) => Shape::Object {
                objects: objects.saturating_add(more),
                bytes: bytes.saturating_add(more_bytes),
                depth: depth.max(below.saturating_add(1)),
            },
            (whole, _) => whole,
        }
    }
}

/// What an opcode does to [`check_expansion`]'s stack.
enum Step {
    /// Pushes a string of this many bytes, or (0) another object without parts.
    Leaf(u64),
    /// Pushes an object made of these (popped) parts.
    Make(Vec<Shape>),
    /// Puts these (popped) parts into the object below them.
    Fill(Vec<Shape>),
    /// Pushes a copy of the object memoised under this index.
    Copy(u32),
    /// Memoises a copy of the top of the stack under this index.
    Memoise(u32),
    Mark,
}

/// Refuses a protocol-2 `pickle` (as [`to_protocol_2`] gives it) whose reading would build
/// more than [`MAX_OBJECTS`] objects or nest them deeper than [`MAX_DEPTH`]. It follows
/// the opcodes as candle's reader does, with each object's size and depth in its place.
/// What the reader itself refuses (an unknown opcode, an empty stack) ends the check: the
/// reader words those errors.
pub(super) fn check_expansion(pickle: &[u8]) -> Result<()> {
    let mut stack: Vec<Shape> = Vec::new();
    let mut memo: HashMap<u32, Shape> = HashMap::new();
    // Objects and string bytes the reader creates.
    let (mut objects, mut bytes) = (0u64, 0u64);
    let max_bytes = (pickle.len() as u64).saturating_add(MAX_COPIED_BYTES);
    let mut pos = 0;
    while let Some(step) = next_step(pickle, &mut pos, &mut stack) {
        // The new top of the stack, and what the reader creates for it: the parts of a
        // new object are moved into it, a memoised one is copied whole.
        let memoised = matches!(step, Step::Memoise(_));
        let (shape, created) = match step {
            Step::Mark => (Shape::Mark, (0, 0)),
            Step::Leaf(len) => (Shape::leaf(len), (1, len)),
            Step::Make(parts) => (Shape::holding(&parts), (1, 0)),
            Step::Fill(parts) => {
                let Some(whole) = stack.pop() else {
                    return Ok(());
                };
                (parts.into_iter().fold(whole, Shape::with), (0, 0))
            }
            Step::Copy(id) => {
                let Some(&shape) = memo.get(&id) else {
                    return Ok(());
                };
                (shape, shape.size())
            }
            Step::Memoise(id) => {
                let Some(&top) = stack.last() else {
                    return Ok(());
                };
                memo.insert(id, top);
                (top, top.size())
            }
        };
        if let Shape::Object { depth, .. } = shape {
            if depth > MAX_DEPTH {
                bail!("the pickle nests objects more than {MAX_DEPTH} deep, far deeper than any checkpoint");
            }
        }
        objects = objects.saturating_add(created.0);
        bytes = bytes.saturating_add(created.1);
        if objects > MAX_OBJECTS || bytes > max_bytes {
            bail!(
                "the pickle expands to more than {} (shared references copied), far more than any checkpoint holds",
                if objects > MAX_OBJECTS {
                    format!("{MAX_OBJECTS} objects")
                } else {
                    format!("{max_bytes} bytes of strings")
                }
            );
        }
        // A memoised object stays where it is; the memo holds the copy.
        if !memoised {
            stack.push(shape);
        }
    }
    Ok(())
}

/// The next opcode of `pickle` at `pos` as a [`Step`], with the parts it takes popped
/// from `stack`; `None` at the end, or where candle's reader would fail.
fn next_step(pickle: &[u8], pos: &mut usize, stack: &mut Vec<Shape>) -> Option<Step> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = pickle.get(*pos..pos.checked_add(n)?)?;
        *pos += n;
        Some(bytes)
    };
    let le = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u32, |v, &b| (v << 8) | u32::from(b))
    };
    let pop = |stack: &mut Vec<Shape>, n: usize| Some(stack.split_off(stack.len().checked_sub(n)?));
    let leaf = Some(Step::Leaf(0));
    let op = take(1)?[0];
    match op {
        PROTO | b'K' => take(1).and(leaf),
        b'M' => take(2).and(leaf),
        b'J' => take(4).and(leaf),
        b'G' => take(8).and(leaf),
        BINUNICODE => {
            let len = le(take(4)?);
            take(len as usize).map(|_| Step::Leaf(u64::from(len)))
        }
        LONG1 => {
            let len = take(1)?[0];
            take(len as usize).and(leaf)
        }
        GLOBAL => {
            for _ in 0..2 {
                let end = pickle.get(*pos..)?.iter().position(|&b| b == b'\n')?;
                *pos += end + 1;
            }
            leaf
        }
        b'N' | 0x88 | 0x89 | b')' | EMPTY_LIST | b'}' => leaf,
        b'(' => Some(Step::Mark),
        b'Q' | 0x85 => pop(stack, 1).map(Step::Make),
        0x86 | b'R' | b'b' | 0x81 => pop(stack, 2).map(Step::Make),
        0x87 => pop(stack, 3).map(Step::Make),
        TUPLE | b'd' | APPENDS | b'u' => {
            let mark = stack.iter().rposition(|s| *s == Shape::Mark)?;
            let parts = stack.split_off(mark + 1);
            stack.pop();
            Some(if matches!(op, APPENDS | b'u') {
                Step::Fill(parts)
            } else {
                Step::Make(parts)
            })
        }
        b'a' => pop(stack, 1).map(Step::Fill),
        b's' => pop(stack, 2).map(Step::Fill),
        BINGET => Some(Step::Copy(le(take(1)?))),
        LONG_BINGET => Some(Step::Copy(le(take(4)?))),
        BINPUT => Some(Step::Memoise(le(take(1)?))),
        LONG_BINPUT => Some(Step::Memoise(le(take(4)?))),
        _ => None,
    }
}

struct Rewrite<'a> {
    input: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    /// Every memo entry by index: `Some` for a string (which was not put in the output's
    /// memo), `None` for anything else (which was).
    memo: HashMap<u32, Option<String>>,
    /// The strings written since the last other opcode, with where each starts in `out`:
    /// while any are here, the last is the top of the stack.
    strings: Vec<(usize, String)>,
}

impl<'a> Rewrite<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            out: Vec::with_capacity(input.len()),
            memo: HashMap::new(),
            strings: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let input = self.input;
        let end = self.pos.checked_add(n).filter(|&end| end <= input.len());
        let Some(end) = end else {
            bail!("the pickle ends inside an opcode at byte {}", self.pos)
        };
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_uint(&mut self, width: usize) -> Result<usize> {
        let bytes = self.take(width)?;
        let value = bytes
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b));
        usize::try_from(value).context("a length beyond memory")
    }

    fn take_line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.input[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            bail!("a GLOBAL at byte {} has no end of line", self.pos)
        };
        self.take(len + 1)
    }

    fn run(mut self) -> Result<Vec<u8>> {
        while self.pos < self.input.len() {
            let at = self.pos;
            let op = self.take(1)?[0];
            match op {
                PROTO => {
                    self.take(1)?;
                    self.emit(&[PROTO, 2]);
                }
                FRAME => {
                    self.take(8)?;
                }
                SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 => {
                    let width = match op {
                        SHORT_BINUNICODE => 1,
                        BINUNICODE => 4,
                        _ => 8,
                    };
                    let len = self.take_uint(width)?;
                    let text = std::str::from_utf8(self.take(len)?)
                        .with_context(|| format!("the string at byte {at} is not UTF-8"))?;
                    self.push_string(text.to_owned());
                }
                SHORT_BINBYTES | BINBYTES | BINBYTES8 | BYTEARRAY8 => {
                    let width = match op {
                        SHORT_BINBYTES => 1,
                        BINBYTES => 4,
                        _ => 8,
                    };
                    let len = self.take_uint(width)?;
                    self.take(len)?;
                    self.push_string(format!("<{len} bytes, not read>"));
                }
                MEMOIZE => {
                    let index = u32::try_from(self.memo.len()).context("memo overflow")?;
                    self.put(index);
                }
                BINPUT => {
                    let index = self.take_uint(1)? as u32;
                    self.put(index);
                }
                LONG_BINPUT => {
                    let index = u32::try_from(self.take_uint(4)?)?;
                    self.put(index);
                }
                BINGET | LONG_BINGET => {
                    let index = self.take_uint(if op == BINGET { 1 } else { 4 })?;
                    let index = u32::try_from(index)?;
                    match self.memo.get(&index) {
                        Some(Some(text)) => {
                            // Each fetch writes the string again: a long one fetched
                            // over and over would fill memory.
                            if self.out.len() + text.len() > 8 * self.input.len() + (64 << 20) {
                                bail!(
                                    "the pickle's shared strings expand past any checkpoint's size"
                                );
                            }
                            self.push_string(text.clone())
                        }
                        Some(None) => {
                            self.emit(&[LONG_BINGET]);
                            self.out.extend_from_slice(&index.to_le_bytes());
                        }
                        None => bail!("byte {at} fetches memo entry {index}, which was never put"),
                    }
                }
                STACK_GLOBAL => {
                    let (Some((_, name)), Some((start, module))) =
                        (self.strings.pop(), self.strings.pop())
                    else {
                        bail!("the STACK_GLOBAL at byte {at} does not follow two strings")
                    };
                    if module.contains('\n') || name.contains('\n') {
                        bail!("the STACK_GLOBAL at byte {at} names a line break");
                    }
                    self.out.truncate(start);
                    self.emit(&[GLOBAL]);
                    self.out
                        .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
                }
                GLOBAL => {
                    let module = self.take_line()?;
                    let name = self.take_line()?;
                    self.emit(&[GLOBAL]);
                    self.out.extend_from_slice(module);
                    self.out.extend_from_slice(name);
                }
                EMPTY_SET => self.emit(&[EMPTY_LIST]),
                ADDITEMS => self.emit(&[APPENDS]),
                FROZENSET => self.emit(&[TUPLE]),
                LONG1 => {
                    let len = self.take_uint(1)?;
                    let digits = self.take(len)?;
                    self.emit(&[LONG1, len as u8]);
                    self.out.extend_from_slice(digits);
                }
                _ => {
                    let Some(&(_, arg)) = COPIED.iter().find(|(code, _)| *code == op) else {
                        bail!("opcode {op:#04x} at byte {at} is not one a checkpoint needs")
                    };
                    let arg = self.take(arg)?;
                    self.emit(&[op]);
                    self.out.extend_from_slice(arg);
                    if op == STOP {
                        return Ok(self.out);
                    }
                }
            }
        }
        bail!("the pickle ends without a STOP opcode")
    }

    /// Writes an opcode other than a string: the top of the stack is no longer a string.
    fn emit(&mut self, op: &[u8]) {
        self.strings.clear();
        self.out.extend_from_slice(op);
    }

    fn push_string(&mut self, text: String) {
        let start = self.out.len();
        self.out.push(BINUNICODE);
        self.out
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.out.extend_from_slice(text.as_bytes());
        self.strings.push((start, text));
    }

    /// Memoises the top of the stack under `index`.
    fn put(&mut self, index: u32) {
        match self.strings.last() {
            Some((_, text)) => {
                self.memo.insert(index, Some(text.clone()));
            }
            None => {
                self.memo.insert(index, None);
                self.out.push(LONG_BINPUT);
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::pickle::{Object, Stack};

    /// Shared references that the reader would copy into 2^40 objects, and nesting a
    /// million deep, are refused before the reader runs; a plain pickle passes.
    #[test]
    fn expanding_and_deep_pickles_are_refused() {
        let mut dag = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            dag.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        dag.push(STOP);
        let e = check_expansion(&dag).unwrap_err().to_string();
        assert!(e.contains("expands to more than"), "{e}");
        let deep = [&b"\x80\x02N"[..], &[0x85; 1_000_000], b"."].concat();
        let e = check_expansion(&deep).unwrap_err().to_string();
        assert!(e.contains("nests objects more than 1000 deep"), "{e}");
        let shallow = [&b"\x80\x02N"[..], &[0x85; 100], b"."].concat();
        check_expansion(&shallow).unwrap();
        assert!(read(&shallow).is_ok());
        // Shared references within the bound are read as ever.
        let small = [&dag[..3 + 10 * 7], b"."].concat();
        check_expansion(&small).unwrap();
        assert!(read(&small).is_ok());
        // A long memoised string fetched again and again, in a protocol-4 pickle.
        let long = 1usize << 20;
        let mut strings = [&b"\x80\x04("[..], b"X", &(long as u32).to_le_bytes()].concat();
        strings.extend(std::iter::repeat_n(b'a', long));
        strings.push(MEMOIZE);
        strings.extend(std::iter::repeat_n([BINGET, 0], 100).flatten());
        strings.extend_from_slice(b"l.");
        let e = read(&strings).unwrap_err();
        assert!(format!("{e:#}").contains("shared strings expand"), "{e:#}");
        // The same in protocol 2, which goes to the reader as it is.
        let mut strings = [&b"\x80\x02("[..], b"X", &(long as u32).to_le_bytes()].concat();
        strings.extend(std::iter::repeat_n(b'a', long));
        strings.extend_from_slice(b"q\x00");
        strings.extend(std::iter::repeat_n([BINGET, 0], 100).flatten());
        strings.extend_from_slice(b"l.");
        let e = check_expansion(&strings).unwrap_err().to_string();
        assert!(e.contains("bytes of strings"), "{e}");
    }

    fn read(pickle: &[u8]) -> Result<Object> {
        let bytes = to_protocol_2(pickle)?;
        let mut stack = Stack::empty();
        stack.read_loop(&mut &bytes[..])?;
        Ok(stack.finalize()?)
    }

    fn short(text: &str) -> Vec<u8> {
        let mut op = vec![SHORT_BINUNICODE, text.len() as u8];
        op.extend_from_slice(text.as_bytes());
        op
    }

    /// `{'k': mod.name(7), 'mod': mod.name(8)}` as protocol 4 writes it: a frame, memoised
    /// strings, a STACK_GLOBAL, and a memoised string and the global fetched back.
    fn protocol_4_dict() -> Vec<u8> {
        let mut p = vec![PROTO, 4, FRAME, 0, 0, 0, 0, 0, 0, 0, 0, b'}', MEMOIZE, b'('];
        p.extend(short("k"));
        p.push(MEMOIZE); // 1
        p.extend(short("mod"));
        p.push(MEMOIZE); // 2
        p.extend(short("name"));
        p.push(MEMOIZE); // 3
        p.extend([STACK_GLOBAL, MEMOIZE]); // 4
        p.extend([b'K', 7, 0x85, b'R', MEMOIZE]); // 5
        p.extend([BINGET, 2]); // "mod" again, as a key
        p.extend([BINGET, 4, b'K', 8, 0x85, b'R', b'u', b'.']);
        p
    }

    #[test]
    fn protocol_4_reads_as_protocol_2() {
        let Object::Dict(entries) = read(&protocol_4_dict()).unwrap() else {
            panic!("not a dict")
        };
        assert_eq!(entries.len(), 2);
        // candle's SETITEMS keeps its own order; the pairs are what matters.
        let reduce = |arg: i32| Object::Reduce {
            callable: Box::new(Object::Class {
                module_name: "mod".into(),
                class_name: "name".into(),
            }),
            args: Box::new(Object::Tuple(vec![Object::Int(arg)])),
        };
        assert!(entries.contains(&(Object::Unicode("k".into()), reduce(7))));
        assert!(entries.contains(&(Object::Unicode("mod".into()), reduce(8))));
    }

    #[test]
    fn protocol_2_passes_untouched() {
        let pickle = [PROTO, 2, b'}', b'.'];
        assert!(matches!(to_protocol_2(&pickle).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn sets_and_bytes_become_data_that_is_skipped() {
        let mut p = vec![PROTO, 5, b']', EMPTY_SET, b'('];
        p.extend([
            b'K', 1, b'K', 2, ADDITEMS, b'a', b'(', b'K', 3, FROZENSET, b'a',
        ]);
        p.extend([SHORT_BINBYTES, 2, 0xff, 0x00, b'a', b'.']);
        let Object::List(items) = read(&p).unwrap() else {
            panic!("not a list")
        };
        assert_eq!(
            items,
            [
                Object::List(vec![Object::Int(1), Object::Int(2)]),
                Object::Tuple(vec![Object::Int(3)]),
                Object::Unicode("<2 bytes, not read>".into()),
            ]
        );
    }

    #[test]
    fn malformed_streams_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (
                &[PROTO, 4, STACK_GLOBAL, b'.'],
                "does not follow two strings",
            ),
            (&[PROTO, 4, BINGET, 3, b'.'], "never put"),
            (
                &[PROTO, 4, SHORT_BINUNICODE, 9, b'a'],
                "ends inside an opcode",
            ),
            (&[PROTO, 4, 0x92, b'.'], "opcode 0x92 at byte 2"),
            (&[PROTO, 4, b'N'], "without a STOP"),
        ];
        for (pickle, needle) in cases {
            let err = format!("{:#}", to_protocol_2(pickle).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
        let err = to_protocol_2(&[PROTO, 6]).unwrap_err().to_string();
        assert!(err.contains("protocol 6"), "{err}");
    }
}
