//! The few DER types the EFS certificate extensions are made of (UTF8String, OCTET
//! STRING, UTCTime, SEQUENCE, `[0] EXPLICIT`), written and read.
//!
//! Why our own: the extensions are four fixed shapes, and the fake authorizer must read
//! them back *strictly* (definite minimal lengths, no trailing bytes), which is twenty
//! lines here and would be a second ASN.1 library's conventions to learn otherwise. The
//! reader is a pure function over untrusted bytes: it never panics and never allocates
//! more than its input.

/// Universal tags used here.
pub const UTF8_STRING: u8 = 0x0c;
pub const OCTET_STRING: u8 = 0x04;
pub const UTC_TIME: u8 = 0x17;
pub const SEQUENCE: u8 = 0x30;
/// `[0]` EXPLICIT (context-specific, constructed).
pub const CONTEXT_0: u8 = 0xa0;

/// One TLV: tag, then the definite length in minimal form, then the contents.
pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

pub fn utf8_string(s: &str) -> Vec<u8> {
    tlv(UTF8_STRING, s.as_bytes())
}

pub fn octet_string(b: &[u8]) -> Vec<u8> {
    tlv(OCTET_STRING, b)
}

/// A SEQUENCE of already-encoded members.
pub fn sequence(members: &[Vec<u8>]) -> Vec<u8> {
    tlv(SEQUENCE, &members.concat())
}

/// Why bytes are not the DER that was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerError {
    Truncated,
    WrongTag {
        expected: u8,
        found: u8,
    },
    /// Indefinite, non-minimal or over-long length.
    BadLength,
    TrailingBytes,
    NotUtf8,
}

impl std::fmt::Display for DerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DerError::Truncated => write!(f, "truncated DER"),
            DerError::WrongTag { expected, found } => {
                write!(
                    f,
                    "DER tag 0x{found:02x} where 0x{expected:02x} was expected"
                )
            }
            DerError::BadLength => write!(f, "DER length not in minimal definite form"),
            DerError::TrailingBytes => write!(f, "bytes after the DER value"),
            DerError::NotUtf8 => write!(f, "UTF8String is not UTF-8"),
        }
    }
}

/// A cursor over DER bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The tag of the next value, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The contents of the next value, which must carry `tag`.
    pub fn read(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let (&found, after_tag) = self.rest.split_first().ok_or(DerError::Truncated)?;
        if found != tag {
            return Err(DerError::WrongTag {
                expected: tag,
                found,
            });
        }
        let (&first, mut after_len) = after_tag.split_first().ok_or(DerError::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || after_len.len() < n {
                return Err(DerError::BadLength);
            }
            let (len_bytes, rest) = after_len.split_at(n);
            after_len = rest;
            if len_bytes[0] == 0 {
                return Err(DerError::BadLength);
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 {
                return Err(DerError::BadLength);
            }
            len
        };
        if after_len.len() < len {
            return Err(DerError::Truncated);
        }
        let (contents, rest) = after_len.split_at(len);
        self.rest = rest;
        Ok(contents)
    }

    pub fn read_utf8(&mut self) -> Result<&'a str, DerError> {
        std::str::from_utf8(self.read(UTF8_STRING)?).map_err(|_| DerError::NotUtf8)
    }

    /// Ends the reading: nothing may be left.
    pub fn finish(self) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DerError::TrailingBytes)
        }
    }
}

/// The contents of the single value `bytes` holds, which must carry `tag`.
pub fn read_only(bytes: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let mut r = Reader::new(bytes);
    let contents = r.read(tag)?;
    r.finish()?;
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths_are_minimal() {
        assert_eq!(utf8_string("fs-1"), b"\x0c\x04fs-1");
        assert_eq!(tlv(OCTET_STRING, &[7; 127])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(OCTET_STRING, &[7; 128])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(OCTET_STRING, &[7; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(OCTET_STRING, &[7; 300]).len(), 304);
    }

    #[test]
    fn reads_back_what_it_writes() {
        let inner = sequence(&[utf8_string("a"), octet_string(&[1; 200])]);
        let mut seq = Reader::new(read_only(&inner, SEQUENCE).unwrap());
        assert_eq!(seq.read_utf8().unwrap(), "a");
        assert_eq!(seq.read(OCTET_STRING).unwrap(), &[1; 200][..]);
        assert!(seq.finish().is_ok());
    }

    #[test]
    fn no_truncation_reads_as_whole() {
        let v = sequence(&[
            utf8_string("fs-1"),
            octet_string(&[9; 300]),
            tlv(CONTEXT_0, &utf8_string("t")),
        ]);
        for cut in 0..v.len() {
            assert!(read_only(&v[..cut], SEQUENCE).is_err(), "{cut}");
        }
    }

    #[test]
    fn rejects_what_is_not_der() {
        // truncated, indefinite length, non-minimal long form, long form for a short length
        for bad in [
            &b"\x0c\x05abc"[..],
            b"\x0c\x80abc\x00\x00",
            b"\x0c\x82\x00\x03abc",
            b"\x0c\x81\x03abc",
            b"\x0c",
            b"",
        ] {
            assert!(read_only(bad, UTF8_STRING).is_err(), "{bad:?}");
        }
        assert_eq!(
            read_only(b"\x0c\x01ab", UTF8_STRING),
            Err(DerError::TrailingBytes)
        );
        assert_eq!(
            read_only(b"\x04\x01a", UTF8_STRING),
            Err(DerError::WrongTag {
                expected: UTF8_STRING,
                found: OCTET_STRING
            })
        );
        assert_eq!(
            Reader::new(b"\x0c\x01\xff").read_utf8(),
            Err(DerError::NotUtf8)
        );
    }
}
