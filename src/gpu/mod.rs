//! GPU inference of quantized linears through wgpu compute shaders (Vulkan, Metal, DX12,
//! GL), reading packed codes directly; no CUDA. See docs/GPU.md for kernels and layouts.
//!
//! - [`GpuContext`]: adapter selection (`WGPU_BACKEND` picks backends, `QUANTIZE_ADAPTER`
//!   an adapter by name substring), device, pipeline cache, scratch buffers, and the
//!   adapter's buffer limits. No adapter is an [`Error::InvalidOption`] on `--device`,
//!   never a panic.
//! - [`GpuLinear`]: a [`crate::model::linear::Linear`] whose weights are uploaded once
//!   (int 2/3/4/8 with groups, per-channel, asymmetric zeros and act-order; FP8; dense f32).
//! - [`GpuLinear::time_forwards`], [`GpuContext::copy_buffers`]: kernel and copy timing
//!   for the GEMM/GEMV benchmark (`benches/gemm`).
//!
//! ```no_run
//! # fn main() -> quantize::Result<()> {
//! use quantize::gpu::{GpuContext, GpuLinear, Precision};
//! use quantize::model::linear::Linear;
//! let ctx = GpuContext::from_env()?;
//! let w: Vec<f32> = (0..64 * 96).map(|i| (i % 7) as f32 - 3.0).collect();
//! let scheme = quantize::format::QuantScheme::int(4)?.group(32)?;
//! let q = quantize::quant::rtn::quantize_rtn("w", &w, 64, 96, scheme, None)?;
//! let lin = GpuLinear::from_quantized(&ctx, "w", &q, Precision::F32)?;
//! let (x, mut y) = (vec![1.0f32; 96], vec![0.0f32; 64]);
//! lin.forward(&x, 1, &mut y);
//! # Ok(()) }
//! ```

mod linear;
mod timing;

pub use linear::{quantized_factory, GpuLinear, KernelChoice, Precision, GEMV_MAX_TOKENS};
pub use timing::CopyBuffers;

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Environment variable naming an adapter by a case-insensitive substring of its name.
pub const ADAPTER_ENV: &str = "QUANTIZE_ADAPTER";
/// Environment variable wgpu reads for backends (`vulkan`, `metal`, `dx12`, `gl`, comma list).
pub const BACKEND_ENV: &str = "WGPU_BACKEND";

/// How to pick the adapter. [`GpuOptions::from_env`] fills it from the environment.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends, spelled as `WGPU_BACKEND` (`"vulkan"`, `"gl"`, `"metal,dx12"`); `None`: all.
    pub backends: Option<String>,
    /// Case-insensitive substring of the adapter name; `None`: the best adapter
    /// (discrete > integrated > virtual > CPU; Vulkan/Metal/DX12 before GL).
    pub adapter: Option<String>,
    /// Cap on the bytes of one storage binding, below the adapter's own limit (to
    /// exercise the split of large matrices in tests).
    pub max_binding_bytes: Option<u64>,
    /// Do not request shader-f16 even when the adapter has it.
    pub no_f16: bool,
}

impl GpuOptions {
    /// `WGPU_BACKEND` and `QUANTIZE_ADAPTER` (unset or empty: no constraint).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        Self { backends: var(BACKEND_ENV), adapter: var(ADAPTER_ENV), ..Self::default() }
    }
}

/// A compute kernel (one WGSL file) with its specialization constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    GemvF32,
    GemmF32,
    GemvInt { bits: u8 },
    GemmInt { bits: u8 },
    GemvIntF16 { bits: u8 },
    GemmIntF16 { bits: u8 },
    GemvFp8 { e5m2: bool },
    GemmFp8 { e5m2: bool },
}

impl Kernel {
    pub fn file(&self) -> &'static str {
        match self {
            Kernel::GemvF32 => "gemv_f32.wgsl",
            Kernel::GemmF32 => "gemm_f32.wgsl",
            Kernel::GemvInt { .. } => "gemv_int.wgsl",
            Kernel::GemmInt { .. } => "gemm_int.wgsl",
            Kernel::GemvIntF16 { .. } => "gemv_int_f16.wgsl",
            Kernel::GemmIntF16 { .. } => "gemm_int_f16.wgsl",
            Kernel::GemvFp8 { .. } => "gemv_fp8.wgsl",
            Kernel::GemmFp8 { .. } => "gemm_fp8.wgsl",
        }
    }

    fn source(&self) -> &'static str {
        match self {
            Kernel::GemvF32 => include_str!("../../shaders/gemv_f32.wgsl"),
            Kernel::GemmF32 => include_str!("../../shaders/gemm_f32.wgsl"),
            Kernel::GemvInt { .. } => include_str!("../../shaders/gemv_int.wgsl"),
            Kernel::GemmInt { .. } => include_str!("../../shaders/gemm_int.wgsl"),
            Kernel::GemvIntF16 { .. } => include_str!("../../shaders/gemv_int_f16.wgsl"),
            Kernel::GemmIntF16 { .. } => include_str!("../../shaders/gemm_int_f16.wgsl"),
            Kernel::GemvFp8 { .. } => include_str!("../../shaders/gemv_fp8.wgsl"),
            Kernel::GemmFp8 { .. } => include_str!("../../shaders/gemm_fp8.wgsl"),
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        match *self {
            Kernel::GemvInt { bits }
            | Kernel::GemmInt { bits }
            | Kernel::GemvIntF16 { bits }
            | Kernel::GemmIntF16 { bits } => {
                vec![("BITS", bits as f64)]
            }
            Kernel::GemvFp8 { e5m2 } | Kernel::GemmFp8 { e5m2 } => vec![("E5M2", e5m2 as u8 as f64)],
            _ => vec![],
        }
    }

    fn needs_f16(&self) -> bool {
        matches!(self, Kernel::GemvIntF16 { .. } | Kernel::GemmIntF16 { .. })
    }

    /// GEMV kernels: `[32 outputs, 1 token]` per workgroup; GEMM: `[64 outputs, 64 tokens]`.
    pub fn tile(&self) -> (usize, usize) {
        match self {
            Kernel::GemvF32 | Kernel::GemvInt { .. } | Kernel::GemvIntF16 { .. } | Kernel::GemvFp8 { .. } => (32, 1),
            _ => (64, 64),
        }
    }
}

/// The uniform block every kernel reads (`struct Params` in the WGSL files).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n: u32,
    pub k: u32,
    pub kw: u32,
    pub tokens: u32,
    pub group_size: u32,
    pub groups: u32,
    pub act_order: u32,
    pub ldy: u32,
    pub y0: u32,
    pub zw: u32,
    pub ldw: u32,
    pub pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// One dispatch: its parameters, the buffers at bindings 2..=5 (weight, scales, zeros,
/// g_idx; `None` binds a dummy) and the workgroup counts.
pub(crate) struct Dispatch<'a> {
    pub params: Params,
    pub buffers: [Option<&'a wgpu::Buffer>; 4],
    pub groups: [u32; 3],
}

#[derive(Default)]
struct Scratch {
    x: Option<wgpu::Buffer>,
    y: Option<wgpu::Buffer>,
    read: Option<wgpu::Buffer>,
}

/// An adapter, its device and queue, the pipeline cache and shared scratch buffers.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    f16: bool,
    timestamps: bool,
    max_binding: u64,
    max_workgroups: u32,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    dummy: wgpu::Buffer,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    scratch: Mutex<Scratch>,
    errors: Arc<Mutex<Option<String>>>,
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Names of the adapters wgpu finds on `backends` (for messages and `--device` help).
pub fn list_adapters(opts: &GpuOptions) -> Result<Vec<String>> {
    let (instance, backends) = instance(opts)?;
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    Ok(adapters.iter().map(|a| describe(&a.get_info())).collect())
}

fn instance(opts: &GpuOptions) -> Result<(wgpu::Instance, wgpu::Backends)> {
    let backends = match &opts.backends {
        None => wgpu::Backends::all(),
        Some(s) => {
            let b = wgpu::Backends::from_comma_list(s);
            if b.is_empty() {
                return Err(Error::option(
                    "--device",
                    format!("gpu: {BACKEND_ENV}={s:?} names no wgpu backend (use vulkan, metal, dx12 or gl, or unset it); use --device cpu to run without a GPU"),
                ));
            }
            b
        }
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::from_build_config().with_env();
    Ok((wgpu::Instance::new(desc), backends))
}

impl GpuContext {
    /// A context on the adapter the environment selects ([`GpuOptions::from_env`]).
    pub fn from_env() -> Result<Arc<Self>> {
        Self::new(&GpuOptions::from_env())
    }

    pub fn new(opts: &GpuOptions) -> Result<Arc<Self>> {
        let (instance, backends) = instance(opts)?;
        let backends_msg = opts.backends.clone().unwrap_or_else(|| "all".into());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        adapters.retain(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS));
        if adapters.is_empty() {
            return Err(Error::option(
                "--device",
                format!(
                    "gpu: no GPU adapter with compute shaders found (backends: {backends_msg}; {BACKEND_ENV}={:?}); install a Vulkan, Metal or DX12 driver (Linux without a GPU: mesa-vulkan-drivers) or use --device cpu",
                    std::env::var(BACKEND_ENV).unwrap_or_default()
                ),
            ));
        }
        if let Some(want) = &opts.adapter {
            let all: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want.to_lowercase()));
            if adapters.is_empty() {
                return Err(Error::option(
                    "--device",
                    format!("gpu: no adapter name contains {want:?} ({ADAPTER_ENV}); available: {}", all.join("; ")),
                ));
            }
        }
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (device_rank(i.device_type), i.backend == wgpu::Backend::Gl)
        });
        let adapter = adapters.swap_remove(0);
        let info = adapter.get_info();
        let features = adapter.features();
        let f16 = features.contains(wgpu::Features::SHADER_F16) && !opts.no_f16;
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut required = wgpu::Features::empty();
        required.set(wgpu::Features::SHADER_F16, f16);
        required.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("quantize"),
            required_features: required,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::option("--device", format!("gpu: adapter {}: cannot create a device: {e}", describe(&info)))
        })?;
        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
        });
        let mut max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        if let Some(cap) = opts.max_binding_bytes {
            max_binding = max_binding.min(cap.max(256));
        }
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend((1..=5).map(|b| storage(b, true)));
        entries.push(storage(6, false));
        let layout = device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("linear"), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("linear"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let dummy = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dummy"),
            contents: &[0u8; 16],
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(Arc::new(Self {
            device,
            queue,
            info,
            f16,
            timestamps,
            max_binding,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            layout,
            pipeline_layout,
            dummy,
            pipelines: Mutex::default(),
            scratch: Mutex::default(),
            errors,
        }))
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// `name (backend, device type)`.
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// The adapter is a CPU rasterizer (Mesa llvmpipe / lavapipe, WARP): correct, slower
    /// than `--device cpu`.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The device has shader-f16 (the `Precision::F16` kernels can run).
    pub fn has_f16(&self) -> bool {
        self.f16
    }

    /// The device has timestamp queries (the benchmark times kernels on the GPU clock).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// Largest storage binding used: larger weights are split into row ranges.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    pub(crate) fn max_workgroups(&self) -> u32 {
        self.max_workgroups
    }

    /// The first error the device reported since the last call (validation, device lost).
    pub(crate) fn take_error(&self) -> Result<()> {
        match self.errors.lock().unwrap_or_else(|p| p.into_inner()).take() {
            None => Ok(()),
            Some(e) => Err(Error::Other(format!("gpu {}: {e}", self.info.name))),
        }
    }

    /// The compiled pipeline of `kernel`, built on first use; WGSL errors come back as
    /// `Error::Other` naming the file.
    pub fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&kernel) {
            return Ok(p.clone());
        }
        if kernel.needs_f16() && !self.f16 {
            return Err(Error::option(
                "precision",
                format!("f16 kernels need shader-f16, which adapter {} lacks; use f32", self.describe()),
            ));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.file()),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let constants = kernel.constants();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.file()),
            layout: Some(&self.pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Other(format!(
                "gpu: shaders/{} ({kernel:?}) failed to build on {}: {e}",
                kernel.file(),
                self.describe()
            )));
        }
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer holding `data` (at least 16 bytes: empty bindings are invalid).
    pub(crate) fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut padded;
        let contents = if bytes.len() < 16 {
            padded = bytes.to_vec();
            padded.resize(16, 0);
            &padded[..]
        } else {
            bytes
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    /// `x` and `y` are bound as their first `x_bytes` / `y_bytes` (scratch buffers grow
    /// in powers of two, beyond what one binding may hold).
    pub(crate) fn bind_group(
        &self,
        params: &wgpu::Buffer,
        x: (&wgpu::Buffer, u64),
        y: (&wgpu::Buffer, u64),
        d: &Dispatch,
    ) -> wgpu::BindGroup {
        let mut entries = vec![
            wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: part(x) },
        ];
        for (i, b) in d.buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 2 + i as u32,
                resource: b.unwrap_or(&self.dummy).as_entire_binding(),
            });
        }
        entries.push(wgpu::BindGroupEntry { binding: 6, resource: part(y) });
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &entries,
        })
    }

    pub(crate) fn uniform(&self, p: &Params) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(p),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Upload `x`, run `dispatches` of `pipeline` in order, and read `out.len()` floats of
    /// y back. The scratch buffers are shared, so concurrent calls run one at a time.
    pub(crate) fn run(
        &self,
        pipeline: &wgpu::ComputePipeline,
        x: &[f32],
        dispatches: &[Dispatch],
        out: &mut [f32],
    ) -> Result<()> {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let (x_bytes, y_bytes) = ((x.len() * 4).max(16) as u64, (out.len() * 4).max(16) as u64);
        let s = &mut *scratch;
        let xb =
            ensure(&self.device, &mut s.x, x_bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST, "x");
        let yb =
            ensure(&self.device, &mut s.y, y_bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC, "y");
        let rb = ensure(
            &self.device,
            &mut s.read,
            y_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "read",
        );
        if !x.is_empty() {
            self.queue.write_buffer(xb, 0, bytemuck::cast_slice(x));
        }
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("linear") });
        let groups: Vec<wgpu::BindGroup> = dispatches
            .iter()
            .map(|d| self.bind_group(&self.uniform(&d.params), (xb, x_bytes), (yb, y_bytes), d))
            .collect();
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("linear"), timestamp_writes: None });
            pass.set_pipeline(pipeline);
            for (d, g) in dispatches.iter().zip(&groups) {
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        enc.copy_buffer_to_buffer(yb, 0, rb, 0, Some(y_bytes));
        self.queue.submit([enc.finish()]);
        self.read_back(rb, y_bytes, out)
    }

    /// Map `buf`'s first `bytes`, copy `out.len()` floats out, unmap.
    pub(crate) fn read_back(&self, buf: &wgpu::Buffer, bytes: u64, out: &mut [f32]) -> Result<()> {
        let slice = buf.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Other(format!("gpu {}: waiting for the device: {e}", self.info.name)))?;
        self.take_error()?;
        let mapped = rx.recv().map_err(|_| Error::Other("gpu: buffer map callback never ran".into()))?;
        mapped.map_err(|e| Error::Other(format!("gpu {}: reading results back: {e}", self.info.name)))?;
        {
            let view = slice.get_mapped_range().map_err(|e| Error::Other(format!("gpu: mapped range: {e:?}")))?;
            let n = out.len() * 4;
            match bytemuck::try_cast_slice::<u8, f32>(&view[..n]) {
                Ok(v) => out.copy_from_slice(v),
                Err(_) => {
                    for (o, c) in out.iter_mut().zip(view[..n].chunks_exact(4)) {
                        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        }
        buf.unmap();
        Ok(())
    }
}

/// The first `n` bytes of a buffer as a binding.
fn part((buffer, n): (&wgpu::Buffer, u64)) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset: 0, size: std::num::NonZeroU64::new(n) })
}

/// The buffer in `slot`, replaced by a larger one (next power of two) when too small.
fn ensure<'a>(
    device: &wgpu::Device,
    slot: &'a mut Option<wgpu::Buffer>,
    bytes: u64,
    usage: wgpu::BufferUsages,
    label: &str,
) -> &'a wgpu::Buffer {
    if slot.as_ref().is_none_or(|b| b.size() < bytes) {
        let size = bytes.next_power_of_two().max(256);
        let size = if size > device.limits().max_buffer_size { bytes.next_multiple_of(4) } else { size };
        *slot = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }));
    }
    slot.as_ref().expect("just filled")
}
