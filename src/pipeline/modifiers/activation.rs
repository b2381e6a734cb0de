//! Activation quantization (W8A8) as an input quantizer: dynamic schemes need nothing;
//! static ones take one scale per site from its histogram, shared by the linears reading
//! it (vLLM fuses q/k/v and gate/up and keeps the largest of their scales, so sharing
//! loses nothing). See [`crate::quant::activation`].

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActScheme};
use crate::model::llama::InputSite;
use crate::pipeline::driver::site_readers;
use crate::pipeline::{BlockContext, InputQuantizer};
use crate::quant::activation::ActCalib;
use std::collections::BTreeMap;

pub struct Activations {
    pub scheme: ActScheme,
    /// Clipping range of static scales.
    pub calib: ActCalib,
    params: BTreeMap<String, ActParams>,
}

impl Activations {
    pub fn new(scheme: ActScheme, calib: ActCalib) -> Result<Self> {
        scheme.check()?;
        Ok(Self { scheme, calib, params: BTreeMap::new() })
    }
}

impl InputQuantizer for Activations {
    fn stats_request(&self) -> StatsRequest {
        StatsRequest { histogram: !self.scheme.dynamic, ..Default::default() }
    }

    fn observe_site(
        &mut self,
        ctx: &BlockContext,
        site: InputSite,
        linears: &[String],
        stats: &SiteStats,
    ) -> Result<()> {
        if self.scheme.dynamic {
            return Ok(());
        }
        let hist = stats.histogram.as_ref().filter(|h| h.values() > 0).ok_or_else(|| {
            Error::other_msg(format!(
                "no activation histogram for {} (a statistics file saved with --dynamic?)",
                site_readers(ctx.cfg, ctx.block, site)
            ))
        })?;
        let p = self.scheme.params_from(self.calib.range(hist, &self.scheme));
        for l in linears {
            self.params.insert(l.clone(), p);
        }
        Ok(())
    }

    fn params(&self) -> &BTreeMap<String, ActParams> {
        &self.params
    }
}
