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
                        Some(Some(text)) => self.push_string(text.clone()),
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
