//! Vulkan loader entry, instance, validation layer + debug messenger, physical-device enumeration.

use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use ash::vk;

use crate::error::{vkerr, EngineError, Result};
use crate::sync::lock;

/// The Khronos validation layer.
pub const VALIDATION_LAYER: &CStr = c"VK_LAYER_KHRONOS_validation";

/// Highest API version the engine asks for (it uses nothing newer).
const MAX_API_VERSION: u32 = vk::API_VERSION_1_3;

/// Messages the debug messenger collected outside any engine call (or, for a call, the messages
/// it caused). All state is behind mutexes: the callback may run on any thread.
#[derive(Debug, Default)]
pub struct ValidationLog {
    /// ERROR-severity messages not yet reported to a caller.
    pub errors: Mutex<Vec<String>>,
    /// WARNING-severity messages (kept, bounded, never turned into failures).
    pub warnings: Mutex<Vec<String>>,
}

/// At most this many warnings are kept (oldest dropped first).
const MAX_WARNINGS: usize = 256;

impl ValidationLog {
    /// Remove and return the collected error messages.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.errors))
    }

    /// Remove and return the collected warning messages.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.warnings))
    }

    pub(crate) fn push(&self, error: bool, message: String) {
        if error {
            lock(&self.errors).push(message);
        } else {
            let mut w = lock(&self.warnings);
            if w.len() >= MAX_WARNINGS {
                w.remove(0);
            }
            w.push(message);
        }
    }
}

/// The collector of the engine call running on a thread (see `CallLogScope`).
pub(crate) type CallLog = ValidationLog;

thread_local! {
    /// Collector of the engine call in progress on this thread; null outside calls or without
    /// validation. The validation layer invokes the messenger on the thread that made the
    /// offending Vulkan call, so each message lands in the collector of the call that caused it,
    /// even with several engines at work in several threads.
    static CURRENT_LOG: Cell<*const CallLog> = const { Cell::new(std::ptr::null()) };
}

/// The collector of the call running on this thread (null when none).
pub(crate) fn current_call_log() -> *const CallLog {
    CURRENT_LOG.try_with(Cell::get).unwrap_or(std::ptr::null())
}

/// While alive, validation messages raised on this thread go to `log` (restored on drop, also
/// when unwinding).
pub(crate) struct CallLogScope {
    previous: *const CallLog,
}

impl CallLogScope {
    /// Route this thread's messages to `log` (null: to the instance's unattributed log). The
    /// caller keeps `log` alive until the scope is dropped.
    pub(crate) fn enter(log: *const CallLog) -> CallLogScope {
        let previous = CURRENT_LOG
            .try_with(|c| c.replace(log))
            .unwrap_or(std::ptr::null());
        CallLogScope { previous }
    }
}

impl Drop for CallLogScope {
    fn drop(&mut self) {
        let _ = CURRENT_LOG.try_with(|c| c.set(self.previous));
    }
}

/// Debug-utils callback: appends ERROR and WARNING messages to the collector of the engine call
/// running on this thread, or else to the instance's `ValidationLog` in user data.
unsafe extern "system" fn debug_callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user: *mut c_void,
) -> vk::Bool32 {
    // Never unwind across the FFI boundary.
    let _ = std::panic::catch_unwind(|| {
        if user.is_null() || data.is_null() {
            return;
        }
        // SAFETY: the layer passes a valid callback-data struct for the duration of the call.
        let data = unsafe { &*data };
        // SAFETY: `p_message` is null or a NUL-terminated string valid during the call.
        let msg = unsafe { data.message_as_c_str() }
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default();
        let error = severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR);
        let current = current_call_log();
        let log = if current.is_null() {
            // SAFETY: `user` is the pointer we produced with `Arc::into_raw` when creating the
            // messenger; that Arc reference is only released after the messenger is destroyed.
            unsafe { &*(user as *const ValidationLog) }
        } else {
            // SAFETY: a `CallLogScope` is alive on this thread, whose creator keeps the log
            // alive until the scope ends.
            unsafe { &*current }
        };
        log.push(error, msg);
    });
    vk::FALSE
}

struct DebugMessenger {
    loader: ash::ext::debug_utils::Instance,
    messenger: vk::DebugUtilsMessengerEXT,
    /// `Arc::into_raw` of the log handed to the callback; reclaimed after destruction.
    user_data: *const ValidationLog,
}

/// Loader entry + instance (+ messenger). Engines use the process-wide one (`shared`); a context
/// is destroyed only when the last `Arc` drops, after every logical device (each holds an `Arc`).
pub struct InstanceContext {
    pub(crate) entry: ash::Entry,
    pub(crate) instance: ash::Instance,
    /// The API version the instance was created with.
    pub(crate) api_version: u32,
    debug: Option<DebugMessenger>,
    pub(crate) validation: Option<Arc<ValidationLog>>,
}

// SAFETY: the only non-Send/Sync field is the raw `user_data` pointer of the messenger, which
// points to a `ValidationLog` (itself Send + Sync, all state behind mutexes) that is kept alive by
// the Arc reference it was created from; it is only dereferenced by the callback and in Drop.
unsafe impl Send for InstanceContext {}
// SAFETY: see `Send` above; every other field is Send + Sync.
unsafe impl Sync for InstanceContext {}

fn loader_name() -> &'static str {
    if cfg!(target_os = "windows") {
        "vulkan-1.dll"
    } else if cfg!(target_vendor = "apple") {
        "libvulkan.1.dylib"
    } else {
        "libvulkan.so.1"
    }
}

/// The loader, opened once per process and never closed: re-opening libvulkan (and with it the
/// ICDs) for every instance is slow and some drivers do not survive many load/unload cycles.
static ENTRY: OnceLock<std::result::Result<ash::Entry, String>> = OnceLock::new();

fn load_entry() -> Result<ash::Entry> {
    ENTRY
        .get_or_init(|| {
            // SAFETY: loading the system Vulkan loader runs its initialisers; that is the
            // documented way to use ash with the `loaded` feature and the library is a
            // well-behaved system component.
            unsafe { ash::Entry::load() }.map_err(|e| format!("{} not found ({e})", loader_name()))
        })
        .clone()
        .map_err(EngineError::Unavailable)
}

impl InstanceContext {
    /// Load libvulkan and create a new instance; with `validation`, enable the Khronos layer and
    /// a debug messenger collecting ERROR/WARNING messages. Engines use `shared` instead.
    pub fn new(validation: bool) -> Result<Arc<Self>> {
        let entry = load_entry()?;

        // SAFETY: `entry` holds valid global function pointers.
        let loader_version = unsafe { entry.try_enumerate_instance_version() }
            .map_err(vkerr("vkEnumerateInstanceVersion"))?
            .unwrap_or(vk::API_VERSION_1_0);
        if loader_version < vk::API_VERSION_1_1 {
            return Err(EngineError::Unavailable(format!(
                "the Vulkan loader supports only API {}.{}; 1.1 or newer is required",
                vk::api_version_major(loader_version),
                vk::api_version_minor(loader_version)
            )));
        }
        let api_version = loader_version.min(MAX_API_VERSION);

        // SAFETY: `entry` is valid; a null layer name lists the loader's own extensions.
        let available_exts = unsafe { entry.enumerate_instance_extension_properties(None) }
            .map_err(vkerr("vkEnumerateInstanceExtensionProperties"))?;
        let has_ext = |name: &CStr| {
            available_exts
                .iter()
                .any(|e| e.extension_name_as_c_str() == Ok(name))
        };

        let mut extensions: Vec<*const std::ffi::c_char> = Vec::new();
        let mut flags = vk::InstanceCreateFlags::empty();
        if has_ext(ash::khr::portability_enumeration::NAME) {
            extensions.push(ash::khr::portability_enumeration::NAME.as_ptr());
            flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
        }
        let mut layers: Vec<*const std::ffi::c_char> = Vec::new();
        if validation {
            // SAFETY: `entry` is valid.
            let available_layers = unsafe { entry.enumerate_instance_layer_properties() }
                .map_err(vkerr("vkEnumerateInstanceLayerProperties"))?;
            if !available_layers
                .iter()
                .any(|l| l.layer_name_as_c_str() == Ok(VALIDATION_LAYER))
            {
                return Err(EngineError::Unavailable(
                    "validation requested but VK_LAYER_KHRONOS_validation is not installed \
                     (install vulkan-validationlayers / the Vulkan SDK)"
                        .into(),
                ));
            }
            layers.push(VALIDATION_LAYER.as_ptr());
            // debug_utils may be provided by the layer rather than the loader.
            // SAFETY: `entry` is valid and the layer name is NUL-terminated.
            let layer_exts =
                unsafe { entry.enumerate_instance_extension_properties(Some(VALIDATION_LAYER)) }
                    .map_err(vkerr("vkEnumerateInstanceExtensionProperties"))?;
            let debug_utils = ash::ext::debug_utils::NAME;
            if !has_ext(debug_utils)
                && !layer_exts
                    .iter()
                    .any(|e| e.extension_name_as_c_str() == Ok(debug_utils))
            {
                return Err(EngineError::Unavailable(
                    "validation requested but VK_EXT_debug_utils is not available".into(),
                ));
            }
            extensions.push(debug_utils.as_ptr());
        }

        let app_info = vk::ApplicationInfo::default()
            .application_name(c"exo-gpu-vulkan")
            .application_version(vk::make_api_version(0, 0, 1, 0))
            .engine_name(c"exo-vk-engine")
            .engine_version(vk::make_api_version(0, 0, 1, 0))
            .api_version(api_version);
        let create_info = vk::InstanceCreateInfo::default()
            .flags(flags)
            .application_info(&app_info)
            .enabled_layer_names(&layers)
            .enabled_extension_names(&extensions);
        // SAFETY: every pointer in `create_info` refers to locals/statics alive for the call.
        let instance =
            unsafe { entry.create_instance(&create_info, None) }.map_err(|r| {
                match r {
            vk::Result::ERROR_INCOMPATIBLE_DRIVER => EngineError::Unavailable(
                "no compatible Vulkan driver (vkCreateInstance: VK_ERROR_INCOMPATIBLE_DRIVER)"
                    .into(),
            ),
            vk::Result::ERROR_LAYER_NOT_PRESENT => EngineError::Unavailable(
                "VK_LAYER_KHRONOS_validation could not be loaded (install vulkan-validationlayers)"
                    .into(),
            ),
            r => EngineError::from_vk("vkCreateInstance", r),
        }
            })?;

        let mut ctx = InstanceContext {
            entry,
            instance,
            api_version,
            debug: None,
            validation: None,
        };
        if validation {
            let log = Arc::new(ValidationLog::default());
            let loader = ash::ext::debug_utils::Instance::new(&ctx.entry, &ctx.instance);
            let user_data = Arc::into_raw(Arc::clone(&log));
            let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
                .message_severity(
                    vk::DebugUtilsMessageSeverityFlagsEXT::ERROR
                        | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
                )
                .message_type(
                    vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                        | vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                        | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
                )
                .pfn_user_callback(Some(debug_callback))
                .user_data(user_data as *mut c_void);
            // SAFETY: the instance was created with VK_EXT_debug_utils; `user_data` stays valid
            // until the messenger is destroyed (see Drop).
            match unsafe { loader.create_debug_utils_messenger(&info, None) } {
                Ok(messenger) => {
                    ctx.debug = Some(DebugMessenger {
                        loader,
                        messenger,
                        user_data,
                    });
                    ctx.validation = Some(log);
                }
                Err(r) => {
                    // SAFETY: the messenger was not created, so nobody else holds `user_data`.
                    drop(unsafe { Arc::from_raw(user_data) });
                    return Err(EngineError::from_vk("vkCreateDebugUtilsMessengerEXT", r));
                }
            }
        }
        Ok(Arc::new(ctx))
    }

    /// All physical devices, in the order the loader reports them.
    pub fn physical_devices(&self) -> Result<Vec<vk::PhysicalDevice>> {
        // SAFETY: the instance is valid for the lifetime of `self`.
        unsafe { self.instance.enumerate_physical_devices() }
            .map_err(vkerr("vkEnumeratePhysicalDevices"))
    }
}

impl Drop for InstanceContext {
    fn drop(&mut self) {
        if let Some(debug) = self.debug.take() {
            // SAFETY: the messenger belongs to this instance, which is still alive; nothing else
            // uses it.
            unsafe {
                debug
                    .loader
                    .destroy_debug_utils_messenger(debug.messenger, None)
            };
            // SAFETY: the messenger is gone, so the callback can no longer see `user_data`;
            // reclaim the Arc reference created with `Arc::into_raw`.
            drop(unsafe { Arc::from_raw(debug.user_data) });
        }
        // SAFETY: every child object (devices hold an Arc to this context) is already destroyed.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// The process-wide instances, one per validation setting (`[without, with]`).
static INSTANCES: [Mutex<Option<Arc<InstanceContext>>>; 2] = [Mutex::new(None), Mutex::new(None)];

impl InstanceContext {
    /// The process-wide instance for this validation setting, created on first use and kept for
    /// the life of the process: never destroyed, so engines (and `probe`) come and go without
    /// instance create/destroy cycles, which some drivers survive only a few dozen times per
    /// process (NVIDIA's fails `vkCreateInstance` with VK_ERROR_INCOMPATIBLE_DRIVER after ~30).
    /// A failed creation is not cached: the next call tries again.
    pub fn shared(validation: bool) -> Result<Arc<Self>> {
        let mut slot = lock(&INSTANCES[usize::from(validation)]);
        if let Some(ctx) = slot.as_ref() {
            return Ok(Arc::clone(ctx));
        }
        let ctx = InstanceContext::new(validation)?;
        *slot = Some(Arc::clone(&ctx));
        Ok(ctx)
    }

    /// Whether this instance has the validation layer and messenger.
    pub fn has_validation(&self) -> bool {
        self.validation.is_some()
    }
}

/// Why Vulkan is not usable on this machine, or `None` when at least one physical device exists.
/// Uses (and, on first use, creates) the process-wide instance without validation.
pub fn probe() -> Option<String> {
    let ctx = match InstanceContext::shared(false) {
        Ok(ctx) => ctx,
        Err(EngineError::Unavailable(m)) => return Some(m),
        Err(e) => return Some(e.to_string()),
    };
    match ctx.physical_devices() {
        Ok(devs) if devs.is_empty() => Some("no Vulkan physical device".into()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}
