//! The engine's cross-device links: one per ordered device pair, made on first use, and the
//! path each pair takes (see `cross`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cross::{plan_path, CrossRequest, CrossSettings, Link};
use crate::error::Result;
use crate::sync::lock;
use crate::transfer::EngineDevice;
use crate::tuning::tuning;

use super::{Engine, Inner};

impl Engine {
    /// The path a copy from device `src` to device `dst` takes (`"p2p"`, `"host-import"` or
    /// `"host-staging"`): that of the pair's link once made (a refused import falls back to
    /// staging), else the planned one.
    pub fn cross_device_path(&self, src: usize, dst: usize) -> Result<&'static str> {
        self.call(|i| i.cross_path(src, dst))
    }

    /// Test and measurement hook: take `path` (`"auto"`, `"host-import"`, `"host-staging"`) for
    /// cross-device copies from now on and, with `same_device`, send copies between two
    /// allocations of one device through the cross-device pipeline as well (so one device
    /// exercises it). Links made so far are dropped. `EXO_VULKAN_TUNE` keys `xpath`/`xsame` set
    /// the defaults.
    pub fn force_cross_device(&self, path: &str, same_device: bool) -> Result<()> {
        let request = CrossRequest::parse(path)?;
        self.call(|i| {
            *lock(&i.cross) = CrossSettings {
                request,
                same_device,
            };
            let old = std::mem::take(&mut *lock(&i.links));
            drop(old);
            Ok(())
        })
    }
}

impl Inner {
    /// The link from `s` to `d`, made on first use (a link whose device was lost is replaced).
    pub(super) fn link(
        &self,
        s: &Arc<EngineDevice>,
        d: &Arc<EngineDevice>,
        request: CrossRequest,
    ) -> Result<Arc<Link>> {
        let key = (s.ctx.info.index, d.ctx.info.index);
        let mut links = lock(&self.links);
        if let Some(l) = links.get(&key) {
            if l.is_alive() {
                return Ok(Arc::clone(l));
            }
        }
        let path = plan_path(request, &s.ctx.info, &d.ctx.info);
        let link = Arc::new(Link::new(&s.ctx, &d.ctx, path, tuning())?);
        if link.import_refused {
            s.import_refused.fetch_add(1, Ordering::Relaxed);
        }
        links.insert(key, Arc::clone(&link));
        Ok(link)
    }

    pub(super) fn cross_path(&self, src: usize, dst: usize) -> Result<&'static str> {
        let (a, b) = (self.info(src)?, self.info(dst)?);
        if let Some(l) = lock(&self.links).get(&(src, dst)) {
            return Ok(l.path.as_str());
        }
        let request = lock(&self.cross).request;
        Ok(plan_path(request, a, b).as_str())
    }

    /// The cross-device path of device `index`: of a link it is part of, else the one planned
    /// to the first other device (or to itself when it is the only one).
    pub(super) fn device_cross_path(&self, index: usize) -> Result<&'static str> {
        self.info(index)?;
        let made = lock(&self.links)
            .iter()
            .filter(|((a, b), _)| *a == index || *b == index)
            .map(|(_, l)| l.path)
            .max_by_key(|p| *p as u8);
        if let Some(p) = made {
            return Ok(p.as_str());
        }
        let other = (0..self.infos.len()).find(|&j| j != index).unwrap_or(index);
        self.cross_path(index, other)
    }
}
