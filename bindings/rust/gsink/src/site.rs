//! Activation sites (`gsink_site`). Names are stable API.
use std::os::raw::c_int;

use gsink_sys as sys;

use crate::error::{check, cstr_lossy, Error, Result, Status};
use crate::util::to_cstring;

/// A place in a layer where activations and gradients are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    ResidIn,
    AttnNormOut,
    Q,
    K,
    V,
    VScaled,
    AttnOut,
    ResidMid,
    MlpNormOut,
    MlpOut,
    ResidOut,
    Z,
    MlpPre,
    MlpUp,
    MlpPost,
}

impl Site {
    /// Every site, in the order of the C enum.
    pub const ALL: [Site; 15] = [
        Site::ResidIn,
        Site::AttnNormOut,
        Site::Q,
        Site::K,
        Site::V,
        Site::VScaled,
        Site::AttnOut,
        Site::ResidMid,
        Site::MlpNormOut,
        Site::MlpOut,
        Site::ResidOut,
        Site::Z,
        Site::MlpPre,
        Site::MlpUp,
        Site::MlpPost,
    ];

    pub(crate) fn raw(self) -> sys::gsink_site {
        self as sys::gsink_site
    }

    fn from_raw(v: sys::gsink_site) -> Result<Site> {
        Site::ALL
            .get(v as usize)
            .copied()
            .ok_or_else(|| Error::new(Status::UnknownSite, format!("site id {v} is unknown to this binding")))
    }

    /// Canonical short name ("resid_out").
    pub fn name(self) -> String {
        // SAFETY: in-range site ids give static strings.
        unsafe { cstr_lossy(sys::gsink_site_name(self.raw())) }
    }

    /// Parses a short name ("resid_out") or a TransformerLens-style name
    /// ("blocks.3.hook_resid_post", which also yields the layer).
    pub fn parse(name: &str) -> Result<(Site, Option<usize>)> {
        let cname = to_cstring(name, "site name")?;
        let mut site: sys::gsink_site = 0;
        let mut layer: c_int = -1;
        // SAFETY: valid pointers.
        check(unsafe { sys::gsink_site_parse(cname.as_ptr(), &mut site, &mut layer) })?;
        Ok((Site::from_raw(site)?, usize::try_from(layer).ok()))
    }
}

/// Which residual branch `branch_ratios` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Attn,
    Mlp,
}

impl Branch {
    pub(crate) fn raw(self) -> c_int {
        match self {
            Branch::Attn => sys::gsink_branch_GSINK_BRANCH_ATTN as c_int,
            Branch::Mlp => sys::gsink_branch_GSINK_BRANCH_MLP as c_int,
        }
    }
}
