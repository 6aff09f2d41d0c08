//! Standard padded base64, the encoding of `[]byte` fields (Secret `data`, ConfigMap
//! `binaryData`) in Kubernetes' JSON: encoding for `stringData`, and checking without decoding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `bytes` with padding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (i, &b)| word | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(
                    ALPHABET[((word >> (18 - 6 * i)) & 0x3f) as usize],
                ));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// The length of what `text` decodes to, or the offset of the first byte that makes it invalid.
/// Line breaks are ignored and padding is required, as Go's `base64.StdEncoding` decodes.
pub(crate) fn decoded_len(text: &str) -> Result<usize, usize> {
    let mut symbols = 0;
    let mut padding = 0;
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            b'\r' | b'\n' => continue,
            b'=' if symbols % 4 >= 2 => padding += 1,
            _ if padding == 0 && ALPHABET.contains(&byte) => {}
            _ => return Err(at),
        }
        symbols += 1;
    }
    if symbols % 4 == 0 {
        Ok(symbols / 4 * 3 - padding)
    } else {
        Err(text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_padding() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn checks_like_go() {
        assert_eq!(decoded_len(""), Ok(0));
        assert_eq!(decoded_len("Zg=="), Ok(1));
        assert_eq!(decoded_len("Zm8="), Ok(2));
        assert_eq!(decoded_len("Zm9v\nYmFy"), Ok(6));
        assert_eq!(decoded_len("Zm9"), Err(3));
        assert_eq!(decoded_len("Zm9v!"), Err(4));
        assert_eq!(decoded_len("Z==="), Err(1));
        assert_eq!(decoded_len("Zg==Zg=="), Err(4));
        assert_eq!(decoded_len("Zm=v"), Err(3));
        assert_eq!(decoded_len("hello world"), Err(5));
    }
}
