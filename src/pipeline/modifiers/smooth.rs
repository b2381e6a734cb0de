//! SmoothQuant (Xiao et al. 2023) as a block transform: each site's per-channel max |x|
//! on the full-precision block gives scales `s = max|x|^α / max|w|^(1-α)` folded into
//! the block's scale groups ([`crate::quant::activation::smooth`]).

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::model::llama::InputSite;
use crate::pipeline::driver::site_readers;
use crate::pipeline::{BlockContext, BlockTransform};
use crate::quant::activation::smooth::smooth_block;
use crate::quant::awq::weights::BlockWeights;
use std::collections::BTreeMap;

pub struct SmoothQuant {
    /// Migration strength α in (0, 1].
    pub alpha: f32,
    absmax: BTreeMap<InputSite, Vec<f32>>,
}

impl SmoothQuant {
    pub fn new(alpha: f32) -> Result<Self> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(Error::option("--smooth", format!("{alpha}: the migration strength is in (0, 1]")));
        }
        Ok(Self { alpha, absmax: BTreeMap::new() })
    }
}

impl BlockTransform for SmoothQuant {
    fn name(&self) -> &'static str {
        "smoothquant"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest { min_max: true, ..Default::default() }
    }

    fn needs_activations(&self) -> bool {
        false
    }

    fn observe(
        &mut self,
        ctx: &BlockContext,
        _: &BlockWeights,
        site: InputSite,
        _: Option<&[f32]>,
        stats: &SiteStats,
    ) -> Result<()> {
        let mm = stats.min_max.as_ref().ok_or_else(|| {
            Error::other_msg(format!(
                "smoothquant: no per-channel ranges for {} (statistics saved without smoothing?)",
                site_readers(ctx.cfg, ctx.block, site)
            ))
        })?;
        self.absmax.insert(site, mm.min.iter().zip(&mm.max).map(|(lo, hi)| (-lo).max(*hi)).collect());
        Ok(())
    }

    fn apply(
        &mut self,
        ctx: &BlockContext,
        bw: &mut BlockWeights,
    ) -> Result<(Vec<(String, Vec<f32>)>, Option<String>)> {
        let absmax = std::mem::take(&mut self.absmax);
        Ok((smooth_block(ctx.cfg, bw, &|s| absmax[&s].clone(), self.alpha)?, None))
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}
