//! Kernel timing, the primitive a benchmark needs from the device (`benches/gemm` builds
//! its tables on it): [`GpuLinear::time_forwards`] times a batch of forwards on the GPU
//! clock (timestamp queries at the start and end of one compute pass) when the adapter
//! has them, else on the wall clock around submit + wait; [`GpuContext::copy_buffers`]
//! times buffer-to-buffer copies.

use super::linear::{GpuLinear, KernelChoice};
use super::{Dispatch, GpuContext};
use crate::error::{Error, Result};
use crate::model::linear::Linear;
use std::time::Instant;

impl GpuContext {
    /// Seconds for `reps` repetitions of `dispatches` in one pass (x and y are the scratch
    /// buffers; their contents do not matter for timing), and whether the GPU clock
    /// measured it.
    fn time_batch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        x_len: usize,
        y_len: usize,
        dispatches: &[Dispatch],
        reps: usize,
    ) -> Result<(f64, bool)> {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *scratch;
        let (xn, yn) = ((x_len * 4).max(16) as u64, (y_len * 4).max(16) as u64);
        let xb =
            super::ensure(&self.device, &mut s.x, xn, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST, "x");
        let yb =
            super::ensure(&self.device, &mut s.y, yn, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC, "y");
        let groups: Vec<wgpu::BindGroup> =
            dispatches.iter().map(|d| self.bind_group(&self.uniform(&d.params), (xb, xn), (yb, yn), d)).collect();
        let queries = self.timestamps.then(|| {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ts"),
                size: 16,
                usage,
                mapped_at_creation: false,
            });
            let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
            let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ts-read"),
                size: 16,
                usage,
                mapped_at_creation: false,
            });
            (set, resolve, read)
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        {
            let timestamp_writes = queries.as_ref().map(|(set, _, _)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes });
            pass.set_pipeline(pipeline);
            for _ in 0..reps {
                for (d, g) in dispatches.iter().zip(&groups) {
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
        }
        if let Some((set, resolve, read)) = &queries {
            enc.resolve_query_set(set, 0..2, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, read, 0, Some(16));
        }
        let t0 = Instant::now();
        self.queue.submit([enc.finish()]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Other(format!("gpu: waiting for the device: {e}")))?;
        let wall = t0.elapsed().as_secs_f64();
        self.take_error()?;
        if let Some((_, _, read)) = &queries {
            let mut ticks = [0f32; 4];
            self.read_back(read, 16, &mut ticks)?;
            let t: [u64; 2] = bytemuck::cast(ticks);
            let gpu = t[1].saturating_sub(t[0]) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9;
            if gpu > 0.0 && gpu <= wall * 1.5 {
                return Ok((gpu, true));
            }
        }
        Ok((wall, false))
    }

    /// Two buffers of `bytes` (capped at the adapter's buffer size limit, rounded down to
    /// 4 bytes) to time copies between.
    pub fn copy_buffers(&self, bytes: u64) -> CopyBuffers<'_> {
        let bytes = bytes.min(self.device.limits().max_buffer_size) / 4 * 4;
        let mk = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("copy"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        CopyBuffers { ctx: self, src: mk(wgpu::BufferUsages::COPY_SRC), dst: mk(wgpu::BufferUsages::COPY_DST), bytes }
    }
}

/// See [`GpuContext::copy_buffers`].
pub struct CopyBuffers<'a> {
    ctx: &'a GpuContext,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    bytes: u64,
}

impl CopyBuffers<'_> {
    /// Bytes of one copy.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Wall seconds of `reps` copies in one submission (the first call also pays for the
    /// buffers' zero-initialization).
    pub fn time(&self, reps: usize) -> Result<f64> {
        let ctx = self.ctx;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
        for _ in 0..reps {
            enc.copy_buffer_to_buffer(&self.src, 0, &self.dst, 0, Some(self.bytes));
        }
        let t0 = Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Other(format!("gpu: waiting for the device: {e}")))?;
        let t = t0.elapsed().as_secs_f64();
        ctx.take_error()?;
        Ok(t)
    }
}

impl GpuLinear {
    /// Seconds for `reps` forwards of `tokens` tokens (the kernel [`KernelChoice::Auto`]
    /// picks) in one compute pass, on scratch inputs, and whether the GPU clock measured
    /// them (else the wall clock). Errors when `tokens` do not fit one submission.
    pub fn time_forwards(&self, tokens: usize, reps: usize) -> Result<(f64, bool)> {
        let ctx = self.context();
        let kernel = self.kernel(tokens, KernelChoice::Auto);
        if tokens > self.max_tokens(kernel) {
            return Err(Error::option(
                "--tokens",
                format!("{tokens} tokens do not fit one submission ({} at most)", self.max_tokens(kernel)),
            ));
        }
        let pipeline = ctx.pipeline(kernel)?;
        let d = self.dispatches(kernel, tokens);
        ctx.time_batch(&pipeline, tokens * self.padded_in(), tokens * self.out_features(), &d, reps)
    }
}
