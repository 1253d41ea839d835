//! tessera: batch segmentation and measurement of 2D/3D scientific images.
//!
//! A YAML pipeline ([`spec`]) is compiled into a typed stage graph ([`plan`]), run over samples
//! by the executor ([`exec`]) with the op library ([`ops`]) on images from [`io`], and written
//! as label images and phenotype tables ([`table`]) with within/between statistics ([`stats`])
//! and provenance ([`record`]); [`report`] shows progress and renders reports; [`sched`] shards studies into array jobs and submits them. The binary is a thin shell over [`cli`].

pub mod alloc;
pub mod classify;
pub mod cli;
pub mod exec;
pub mod io;
pub mod isa;
pub mod ops;
pub mod plan;
pub mod record;
pub mod report;
pub mod sched;
pub mod spec;
pub mod stats;
pub mod store;
pub mod table;
pub mod util;
