//! Calibration statistics on disk (`--save-stats FILE` / `--load-stats FILE`), so that
//! several activation calibrations (min/max, percentile, MSE; INT8 or FP8) can be tried on
//! one model without running the calibration text through it again.
//!
//! A single safetensors file, written byte-for-byte deterministically (tensors in name
//! order, header keys sorted, padded with spaces to a multiple of 8). Per site
//! `k = model.layers.{block}.{attn_in|attn_out|mlp_in|mlp_act}`:
//!
//! | tensor            | dtype | shape         | content                                     |
//! |-------------------|-------|---------------|---------------------------------------------|
//! | `k.tokens`        | I64   | `[2]`         | tokens observed, site width                 |
//! | `k.hist.counts`   | U64   | `[HIST_BINS]` | [`HistogramObserver`] bins                  |
//! | `k.hist.range`    | F32   | `[3]`         | bin width, exact min, exact max             |
//! | `k.min`, `k.max`  | F32   | `[width]`     | per-channel range (when it was collected)   |
//! | `k.abs_sum`       | F64   | `[width]`     | per-channel Σ|x| over `tokens` (AWQ's mean) |
//!
//! `__metadata__`: `format` = [`STATS_FORMAT`] and `calibration` (JSON: text files,
//! windows, seed, weight scheme, smoothing...). Hessians are not stored (they are the size
//! of the weights, and GPTQ needs them from its own sequential pass).
//!
//! What reuse is exact: the statistics are taken on the weight-quantized (and smoothed)
//! model with activations in full precision, so they serve every activation choice
//! (INT8/FP8, symmetric or not, min/max, percentile, MSE) for the same weights and
//! smoothing, giving bit-identical checkpoints to a run that calibrates.

use super::histogram::{HistogramObserver, HIST_BINS};
use super::observers::SiteStats;
use crate::error::{Error, Result};
use crate::io::atomic::AtomicFile;
use crate::io::safetensors::{write_file, HeaderLayout, RawTensor, SafetensorsStore};
use crate::model::llama::{site_width, InputSite};
use crate::model::LlamaConfig;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub const STATS_FORMAT: &str = "quantize-calib-stats/1";

const SITES: [(InputSite, &str); 4] = [
    (InputSite::AttnIn, "attn_in"),
    (InputSite::AttnOut, "attn_out"),
    (InputSite::MlpIn, "mlp_in"),
    (InputSite::MlpAct, "mlp_act"),
];

fn site_key(block: usize, site: InputSite) -> String {
    format!("model.layers.{block}.{}", SITES.iter().find(|(s, _)| *s == site).expect("every site has a key").1)
}

/// The statistics of one site that can be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteRecord {
    pub width: usize,
    pub tokens: usize,
    pub histogram: Option<HistogramObserver>,
    pub min_max: Option<(Vec<f32>, Vec<f32>)>,
    /// Per-channel Σ|x|.
    pub abs_sum: Option<Vec<f64>>,
}

/// Statistics of every site of a model, with a free-form description of the calibration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CalibStats {
    pub meta: BTreeMap<String, Value>,
    pub sites: BTreeMap<(usize, InputSite), SiteRecord>,
}

impl CalibStats {
    /// Keep what `stats` holds, except the Hessian.
    pub fn record(&mut self, block: usize, site: InputSite, stats: &SiteStats) {
        let rec = SiteRecord {
            width: stats.width,
            tokens: stats.tokens,
            histogram: stats.histogram.clone(),
            min_max: stats.min_max.as_ref().map(|m| (m.min.clone(), m.max.clone())),
            abs_sum: stats.abs_mean.as_ref().map(|a| a.parts().0.to_vec()),
        };
        self.sites.insert((block, site), rec);
    }

    /// Calibration tokens (those of the first site).
    pub fn tokens(&self) -> usize {
        self.sites.values().next().map_or(0, |r| r.tokens)
    }

    /// The record of a site, created empty (`width`, no statistics) if absent.
    pub fn site_mut(&mut self, block: usize, site: InputSite, width: usize) -> &mut SiteRecord {
        self.sites.entry((block, site)).or_insert_with(|| SiteRecord {
            width,
            tokens: 0,
            histogram: None,
            min_max: None,
            abs_sum: None,
        })
    }

    /// A site's record, or an error naming the site and the file.
    pub fn site(&self, block: usize, site: InputSite, path: &Path) -> Result<&SiteRecord> {
        self.sites
            .get(&(block, site))
            .ok_or_else(|| Error::format(path, format!("no statistics for {}", site_key(block, site))))
    }

    /// Refuse statistics of another model: every site of `cfg`, with its width, and no other.
    pub fn check_model(&self, cfg: &LlamaConfig, path: &Path) -> Result<()> {
        for b in 0..cfg.num_layers {
            for (site, _) in SITES {
                let width = site_width(cfg, site);
                match self.sites.get(&(b, site)) {
                    Some(r) if r.width == width => {}
                    Some(r) => {
                        return Err(Error::format(
                            path,
                            format!(
                                "{} has width {} but this model's is {width}: statistics of another model",
                                site_key(b, site),
                                r.width
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::format(
                            path,
                            format!(
                                "no statistics for {} (the file covers {} sites; this model has {})",
                                site_key(b, site),
                                self.sites.len(),
                                cfg.num_layers * SITES.len()
                            ),
                        ))
                    }
                }
            }
        }
        if let Some(&(b, s)) = self.sites.keys().find(|(b, _)| *b >= cfg.num_layers) {
            return Err(Error::format(
                path,
                format!(
                    "{} is beyond this model's {} blocks: statistics of another model",
                    site_key(b, s),
                    cfg.num_layers
                ),
            ));
        }
        Ok(())
    }

    /// Write to `path` (refusing to overwrite), through a temporary file renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        if path.file_name().is_none() {
            return Err(Error::option("--save-stats", format!("{} has no file name", path.display())));
        }
        let file = AtomicFile::create(path)?;
        let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let mut put =
            |name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>| tensors.insert(name, (dtype, shape, data));
        for (&(b, site), r) in &self.sites {
            let k = site_key(b, site);
            put(
                format!("{k}.tokens"),
                Dtype::I64,
                vec![2],
                [r.tokens as i64, r.width as i64].iter().flat_map(|v| v.to_le_bytes()).collect(),
            );
            if let Some(h) = &r.histogram {
                put(
                    format!("{k}.hist.counts"),
                    Dtype::U64,
                    vec![HIST_BINS],
                    h.counts().iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
                put(
                    format!("{k}.hist.range"),
                    Dtype::F32,
                    vec![3],
                    [h.width(), h.min(), h.max()].iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
            }
            if let Some((lo, hi)) = &r.min_max {
                put(format!("{k}.min"), Dtype::F32, vec![lo.len()], lo.iter().flat_map(|v| v.to_le_bytes()).collect());
                put(format!("{k}.max"), Dtype::F32, vec![hi.len()], hi.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
            if let Some(s) = &r.abs_sum {
                put(
                    format!("{k}.abs_sum"),
                    Dtype::F64,
                    vec![s.len()],
                    s.iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
            }
        }
        let meta = BTreeMap::from([
            ("calibration".to_string(), serde_json::to_string(&self.meta).expect("JSON values serialize")),
            ("format".to_string(), STATS_FORMAT.to_string()),
        ]);
        let views: Vec<RawTensor<'_>> = tensors
            .iter()
            .map(|(name, (dtype, shape, bytes))| RawTensor { name, dtype: *dtype, shape, bytes })
            .collect();
        write_file(file.path(), &views, &meta, HeaderLayout::Sorted)?;
        file.commit()?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let store = SafetensorsStore::open(path)?;
        let um = store.user_metadata();
        if um.get("format").map(String::as_str) != Some(STATS_FORMAT) {
            return Err(Error::format(
                path,
                format!(
                    "not a statistics file of this tool (metadata format {:?}, expected {STATS_FORMAT:?})",
                    um.get("format")
                ),
            ));
        }
        let meta: BTreeMap<String, Value> = serde_json::from_str(um.get("calibration").map_or("{}", String::as_str))
            .map_err(|e| Error::format(path, format!("calibration metadata is not JSON: {e}")))?;
        let bytes = |name: &str, dtype: Dtype, len: usize| -> Result<Option<Vec<u8>>> {
            if !store.contains(name) {
                return Ok(None);
            }
            let t = store.raw(name)?;
            if t.dtype != dtype || t.shape != [len] {
                return Err(Error::tensor(
                    name,
                    format!("{:?} {:?} in {}, expected {dtype:?} [{len}]", t.dtype, t.shape, path.display()),
                ));
            }
            Ok(Some(t.bytes.to_vec()))
        };
        let f32s =
            |b: Vec<u8>| -> Vec<f32> { b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
        let mut sites = BTreeMap::new();
        for name in store.names() {
            let Some(k) = name.strip_suffix(".tokens") else { continue };
            let parsed = k
                .strip_prefix("model.layers.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(b, s)| Some((b.parse::<usize>().ok()?, SITES.iter().find(|(_, n)| *n == s)?.0)));
            let Some((block, site)) = parsed else {
                return Err(Error::tensor(
                    name,
                    format!("in {}: not a site of this tool's statistics", path.display()),
                ));
            };
            let tw: Vec<i64> = bytes(name, Dtype::I64, 2)?
                .expect("listed")
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if tw[0] < 0 || tw[1] < 0 {
                return Err(Error::tensor(
                    name,
                    format!("in {}: tokens {} and width {} must not be negative", path.display(), tw[0], tw[1]),
                ));
            }
            let (tokens, width) = (tw[0] as usize, tw[1] as usize);
            let histogram = match (
                bytes(&format!("{k}.hist.counts"), Dtype::U64, HIST_BINS)?,
                bytes(&format!("{k}.hist.range"), Dtype::F32, 3)?,
            ) {
                (Some(c), Some(r)) => {
                    let counts: Vec<u64> =
                        c.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
                    let r = f32s(r);
                    let values = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c)).ok_or_else(|| {
                        Error::tensor(
                            format!("{k}.hist.counts"),
                            format!("in {}: the counts overflow 64 bits (a corrupt file)", path.display()),
                        )
                    })?;
                    Some(
                        HistogramObserver::from_parts(counts, r[0], r[1], r[2], values)
                            .map_err(|e| Error::tensor(format!("{k}.hist"), format!("in {}: {e}", path.display())))?,
                    )
                }
                (None, None) => None,
                _ => {
                    return Err(Error::tensor(
                        format!("{k}.hist"),
                        format!("in {}: counts and range must both be present", path.display()),
                    ))
                }
            };
            let min_max = match (
                bytes(&format!("{k}.min"), Dtype::F32, width)?,
                bytes(&format!("{k}.max"), Dtype::F32, width)?,
            ) {
                (Some(a), Some(b)) => Some((f32s(a), f32s(b))),
                _ => None,
            };
            let abs_sum = bytes(&format!("{k}.abs_sum"), Dtype::F64, width)?
                .map(|b| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect());
            sites.insert((block, site), SiteRecord { width, tokens, histogram, min_max, abs_sum });
        }
        if sites.is_empty() {
            return Err(Error::format(path, "holds no site statistics"));
        }
        Ok(Self { meta, sites })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::observers::StatsRequest;
    use serde_json::json;

    #[test]
    fn save_load_round_trip_is_exact_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SiteStats::new(
            3,
            StatsRequest { histogram: true, min_max: true, abs_mean: true, hessian: false, cross: false },
        );
        st.observe(&[1.0, -2.5, 0.125, 3.0, 1e-3, -7.0], 2);
        let mut c = CalibStats::default();
        c.meta.insert("seqlen".into(), json!(512));
        c.record(0, InputSite::AttnIn, &st);
        c.record(0, InputSite::MlpAct, &st);
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        c.save(&a).unwrap();
        c.save(&b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(matches!(c.save(&a), Err(Error::OutputExists { .. })));
        let back = CalibStats::load(&a).unwrap();
        assert_eq!(back, c);
        let r = &back.sites[&(0, InputSite::MlpAct)];
        assert_eq!((r.width, r.tokens), (3, 2));
        assert_eq!(r.abs_sum.as_deref(), Some(st.abs_mean.as_ref().unwrap().parts().0));
        assert_eq!(r.min_max.as_ref().unwrap().1, st.min_max.as_ref().unwrap().max);
        std::fs::write(&b, b"not a statistics file").unwrap();
        assert!(CalibStats::load(&b).is_err());
    }

    /// Rewrite tensor `name` of the statistics file `src` into `dst` with `bytes`.
    fn patched(src: &Path, dst: &Path, name: &str, bytes: Vec<u8>) {
        let data = std::fs::read(src).unwrap();
        let st = safetensors::SafeTensors::deserialize(&data).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let b: &[u8] = if n == name { &bytes } else { v.data() };
                (n.clone(), safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), b).unwrap())
            })
            .collect();
        let out = safetensors::serialize(views, meta.metadata().clone()).unwrap();
        std::fs::write(dst, out).unwrap();
    }

    /// Issue 15.4: histogram counts whose sum wraps, and negative token counts, are
    /// errors naming the tensor, not a silently different histogram.
    #[test]
    fn corrupt_counts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SiteStats::new(
            2,
            StatsRequest { histogram: true, min_max: false, abs_mean: false, hessian: false, cross: false },
        );
        st.observe(&[1.0, -2.0, 0.5, 3.0], 2);
        let mut c = CalibStats::default();
        c.record(0, InputSite::AttnIn, &st);
        let good = dir.path().join("good.safetensors");
        c.save(&good).unwrap();
        let key = site_key(0, InputSite::AttnIn);
        let mut counts = vec![0u64; HIST_BINS];
        counts[0] = u64::MAX;
        counts[1] = 5;
        let bad = dir.path().join("wrap.safetensors");
        patched(&good, &bad, &format!("{key}.hist.counts"), counts.iter().flat_map(|v| v.to_le_bytes()).collect());
        let e = CalibStats::load(&bad).unwrap_err().to_string();
        assert!(e.contains("hist.counts") && e.contains("overflow") && e.contains("wrap.safetensors"), "{e}");
        let neg = dir.path().join("neg.safetensors");
        patched(&good, &neg, &format!("{key}.tokens"), [-4i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect());
        let e = CalibStats::load(&neg).unwrap_err().to_string();
        assert!(e.contains(".tokens") && e.contains("-4"), "{e}");
    }
}
