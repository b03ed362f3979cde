//! The executor: the only code that links libtorch (through tch). Today it reports the libtorch
//! build and the devices it sees (`recipe env`); training lands here with the executor issue.

/// What this build's libtorch sees.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub cpu_threads: i32,
}

pub fn device_report() -> DeviceReport {
    DeviceReport {
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
    }
}
