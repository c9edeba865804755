//! `bd3-wgpu bench forward`: placeholder filled in below.
use bd3_model::Result;
pub fn run(_args: &[String]) -> Result<()> {
    Ok(())
}
