//! The contact graph: which objects touch, and over how much surface.

use serde::{Deserialize, Serialize};

use super::local::{Contacts, LocalSums, Seam, Wanted};
use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};
use crate::table::{Column, Table};
use crate::util::ByteReader;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsOp {
    pub labels: String,
}

pub static CONTACTS: OpInfo = OpInfo {
    name: "contacts",
    family: "measure",
    version: 1,
    output: Kind::Table,
    same_kind: false,
    summary: "Labels → table of touching object pairs with their contact area (the region adjacency graph).",
    doc: "One row per pair of objects that share at least one voxel face (6-connectivity; 4 in 2D), \
          sorted by `label_a`, then `label_b`:\n\
          - `label_a`, `label_b`: the two labels, `label_a < label_b`.\n\
          - `faces`: voxel faces they share.\n\
          - `area`: the faces' area in physical units (unit²; in 2D the shared edge length in \
          unit): faces across z count spacing_y·spacing_x, across y spacing_z·spacing_x, across x \
          spacing_z·spacing_y. Equal to cc3d `contacts(labels, connectivity=6, surface_area=True, \
          anisotropy=(sz, sy, sx))` (connectivity 4 in 2D); `faces` is its `surface_area=False`. \
          cc3d adds the areas face by face, tessera multiplies exact face counts, so the two agree \
          exactly for spacings that are sums of few powers of two and to about 1e-15 otherwise.\n\
          Objects that touch only along an edge or at a corner have no contact area and no row. \
          `measure` gives each object the number of objects it shares faces with (`n_neighbors`) and, with \
          `territories`, the number of territories touching its own (`n_territory_neighbors`). \
          Tiled, streamed and split runs give the same table: the faces are counted between each \
          plane and the one before it.",
    params: &[ParamDoc { name: "labels", ty: "stage (labels)", default: None, doc: "The objects." }],
    build: build::<ContactsOp>,
    fields: fields_of::<ContactsOp>,
    examples: &["labels: {labels}"],
};

impl Op for ContactsOp {
    fn info(&self) -> &'static OpInfo {
        &CONTACTS
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "labels", stage: self.labels.clone(), accepts: &[Kind::Labels] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let l = &inputs[0];
        if l.kind != Kind::Labels {
            return Err(ParamIssue::new("labels", format!("`contacts` needs labels but `labels` is {}", l.kind.with_article()))
                .help("label the mask first (op: label)"));
        }
        Ok(Meta { kind: Kind::Table, dtype: None, ..l.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Labels(labels) = inputs[0] else { return Err("contacts: `labels` is not a label image".into()) };
        let seam = Seam { before: None, last: true, planar: ctx.ndim == 2 };
        let sums = crate::with_labels!(labels, l => LocalSums::of(l.view(), &seam, WANTED));
        Ok(Value::Table(table(&sums.contacts, ctx)))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        let nz = io.input(0).shape()[0];
        let planes = (io.planes(0) / 2).max(1);
        let sums = contacts_of(io.input(0), 0, nz, planes, ctx)?;
        Ok(slab::Outcome::Table(Value::Table(table(&sums, ctx))))
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        Some(self)
    }
}

const WANTED: Wanted = Wanted { shape: false, contacts: true };
const MAGIC: &[u8] = b"tessera-contacts-1";

/// The contacts owned by planes `z0..z1` (those with the plane before, too), read `planes` at a
/// time.
fn contacts_of(input: &dyn slab::Volume, z0: usize, z1: usize, planes: usize, ctx: &Ctx) -> Result<Contacts, String> {
    let read = |a: usize, b: usize| match input.read(a, b)? {
        Value::Labels(l) => Ok(l),
        _ => Err("contacts: `labels` is not labels".to_string()),
    };
    let mut before = super::local::plane_before(input, z0, "contacts: `labels`")?;
    let ranges: Vec<(usize, usize)> = slab::ranges(z1 - z0, planes).map(|(a, b)| (z0 + a, z0 + b)).collect();
    let mut sums = LocalSums::default();
    slab::pipelined(&ranges, &read, |l, _, _| {
        let seam = Seam { before: before.as_ref().map(|b| b.view()), last: false, planar: ctx.ndim == 2 };
        sums.merge(crate::with_labels!(&l, l => LocalSums::of(l.view(), &seam, WANTED)));
        before = Some(l.last_plane());
        Ok(())
    })?;
    Ok(sums.contacts)
}

/// The table of a contact graph.
fn table(c: &Contacts, ctx: &Ctx) -> Table {
    let pairs = c.sorted();
    let planar = ctx.ndim == 2;
    let unit = if planar { ctx.unit.to_string() } else { format!("{}^2", ctx.unit) };
    let mut t = Table::default();
    t.push("label_a", Column::U32(pairs.iter().map(|p| p.0.0).collect()), None);
    t.push("label_b", Column::U32(pairs.iter().map(|p| p.0.1).collect()), None);
    t.push("faces", Column::U64(pairs.iter().map(|p| p.1.iter().sum()).collect()), None);
    t.push("area", Column::F64(pairs.iter().map(|p| Contacts::area(p.1, ctx.spacing, planar)).collect()), Some(unit));
    t
}

fn to_bytes(c: &Contacts) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    c.write(&mut b);
    zstd::bulk::compress(&b, 1).unwrap_or_default()
}

fn from_bytes(bytes: &[u8]) -> Result<Contacts, String> {
    let bad = || "contacts: a partial result is damaged (rerun its block task)".to_string();
    let b = zstd::stream::decode_all(bytes).map_err(|_| bad())?;
    let mut r = ByteReader::new(&b);
    if r.take(MAGIC.len()) != Some(MAGIC) {
        return Err(bad());
    }
    let c = Contacts::read(&mut r).ok_or_else(bad)?;
    if r.left() != 0 {
        return Err(bad());
    }
    Ok(c)
}

/// Split over machines: each block counts the faces its planes own (with the plane before the
/// block), the reduce adds the counts in block order.
impl slab::Phased for ContactsOp {
    fn ending(&self) -> slab::Ending {
        slab::Ending::Table
    }
    fn partial(&self, io: &mut dyn slab::BlockIo, _round: usize, _before: Option<&[u8]>, ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        let planes = (io.planes(0) / 2).max(1);
        Ok(to_bytes(&contacts_of(io.input(0), z0, z1, planes, ctx)?))
    }
    fn reduce(&self, _round: usize, partials: &mut slab::Partials<'_>, _before: Option<&[u8]>, _ctx: &Ctx) -> Result<Vec<u8>, String> {
        let mut all = Contacts::default();
        for p in partials {
            all.merge(from_bytes(&p?)?);
        }
        Ok(to_bytes(&all))
    }
    fn table(&self, reduced: &[u8], ctx: &Ctx) -> Result<Value, String> {
        Ok(Value::Table(table(&from_bytes(reduced)?, ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn pairs_faces_and_areas() {
        // z = 0: 1 and 2 side by side along x (two faces); z = 1: 3 above 1 (one face), 4 touching
        // 2 along an edge only (no row).
        let mut l = Array3::<u32>::zeros((2, 2, 4));
        for y in 0..2 {
            l[[0, y, 0]] = 1;
            l[[0, y, 1]] = 2;
        }
        l[[1, 0, 0]] = 3;
        l[[1, 1, 2]] = 4;
        let ctx = Ctx { sample: "s", spacing: [2.0, 0.5, 0.25], unit: "um", ndim: 3 };
        let Value::Table(t) = ContactsOp { labels: "l".into() }.run(&[&Value::Labels((l).into())], &ctx).unwrap() else {
            panic!("not a table")
        };
        assert_eq!(t.u32("label_a"), vec![1, 1]);
        assert_eq!(t.u32("label_b"), vec![2, 3]);
        assert_eq!(t.u64("faces"), vec![2, 1]);
        assert_eq!(t.f64("area"), vec![2.0 * (2.0 * 0.5), 0.5 * 0.25]);
    }

    #[test]
    fn damaged_partials_are_errors() {
        let mut c = Contacts::default();
        let l = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| ((z + 2 * y + x) % 4) as u32);
        let mut s = LocalSums::default();
        s.add(l.view(), &Seam { last: true, ..Seam::default() }, WANTED);
        c.merge(s.contacts);
        let b = to_bytes(&c);
        assert_eq!(from_bytes(&b).unwrap(), c);
        let raw = zstd::stream::decode_all(&b[..]).unwrap();
        for cut in [0, 5, raw.len() / 2, raw.len() - 1] {
            assert!(from_bytes(&zstd::bulk::compress(&raw[..cut], 1).unwrap()).is_err());
        }
    }
}
