//! A flow's path drawn as SVG: the hops of each node in boxes, the wire between the nodes,
//! each segment's loss where it happened.

use crate::report::{
    join::{FlowReport, PathHop, Where},
    text::count,
};
use std::fmt::Write as _;

use super::esc;

pub(super) const BOX_W: i64 = 136;
pub(super) const BOX_H: i64 = 54;
pub(super) const GAP: i64 = 60;
pub(super) const WIRE: i64 = 124;
pub(super) const PAD: i64 = 14;

/// A flow's path: each node a panel, each hop a box with its count, each segment an arrow;
/// losses in red, where they are.
pub(super) fn path_svg(f: &FlowReport, k: usize) -> String {
    // Group consecutive hops by node.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, hop) in f.path.iter().enumerate() {
        match groups.last_mut() {
            Some((node, hops)) if *node == hop.at.node => hops.push(i),
            _ => groups.push((hop.at.node.clone(), vec![i])),
        }
    }
    let top = 34; // node label above the boxes
    let box_y = top + PAD;
    let height = box_y + BOX_H + 50;
    let mut x = 8;
    let mut box_x = vec![0i64; f.path.len()];
    let mut panels = Vec::new();
    for (node, hops) in &groups {
        let width = PAD * 2 + hops.len() as i64 * BOX_W + (hops.len() as i64 - 1) * GAP;
        panels.push((node.clone(), x, width));
        for (j, &i) in hops.iter().enumerate() {
            box_x[i] = x + PAD + j as i64 * (BOX_W + GAP);
        }
        x += width + WIRE;
    }
    let width = x - WIRE + 8;
    let mut s = String::new();
    let red = "#b42318";
    let gray = "#8c959f";
    let _ = write!(
        s,
        "<svg class=\"path\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"path of {}\" font-family=\"system-ui, 'DejaVu Sans', sans-serif\">\
         <defs><marker id=\"ag{k}\" viewBox=\"0 0 8 8\" refX=\"7\" refY=\"4\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0 L8,4 L0,8 z\" fill=\"{gray}\"/></marker>\
         <marker id=\"ar{k}\" viewBox=\"0 0 8 8\" refX=\"7\" refY=\"4\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0 L8,4 L0,8 z\" fill=\"{red}\"/></marker></defs>",
        esc(&f.title())
    );
    for (node, px, pw) in &panels {
        let _ = write!(
            s,
            "<rect x=\"{px}\" y=\"{}\" width=\"{pw}\" height=\"{}\" rx=\"8\" fill=\"#f6f8fa\" stroke=\"#d8dee4\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"600\" fill=\"#59636e\">{}</text>",
            top - 8,
            BOX_H + PAD * 2 + 8 + 30,
            px + PAD,
            top + 6,
            esc(node)
        );
    }
    // Segments first, so boxes sit on top of arrow ends.
    let mid = box_y + BOX_H / 2;
    for (i, seg) in f.segments.iter().enumerate() {
        let (x1, x2) = (box_x[i] + BOX_W, box_x[i + 1]);
        let losing = seg.lost > 0 && seg.location.is_some_and(|w| w != Where::Edge);
        let (color, marker) = if losing {
            (red, format!("ar{k}"))
        } else {
            (gray, format!("ag{k}"))
        };
        let dash = match seg.location {
            Some(Where::Between | Where::Wire | Where::Unobserved) if losing => {
                " stroke-dasharray=\"5 4\""
            }
            _ => "",
        };
        let cross = seg.from.node != seg.to.node;
        let _ = write!(
            s,
            "<line x1=\"{x1}\" y1=\"{mid}\" x2=\"{}\" y2=\"{mid}\" stroke=\"{color}\" stroke-width=\"{}\"{dash} marker-end=\"url(#{marker})\"/>",
            x2 - 2,
            if losing { "2" } else { "1.5" }
        );
        let cx = (x1 + x2) / 2;
        if losing {
            let _ = write!(
                s,
                "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"700\" fill=\"{red}\">−{}</text>",
                mid - 8,
                count(seg.lost)
            );
            let what = match seg.location {
                Some(Where::Wire) => "on the wire",
                Some(Where::Between) => "uncounted",
                Some(Where::Unobserved) => "unobserved",
                Some(Where::Hop) => "dropped",
                _ => "",
            };
            let _ = write!(
                s,
                "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{red}\">{what}</text>",
                mid + 18
            );
        } else if cross {
            let label = if seg.location == Some(Where::Edge) {
                format!("±{} edge", count(seg.lost))
            } else {
                "wire".to_owned()
            };
            let _ = write!(
                s,
                "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#8c959f\">{}</text>",
                mid - 8,
                esc(&label)
            );
        }
    }
    let charged: Vec<bool> = (0..f.path.len())
        .map(|i| {
            f.segments
                .iter()
                .any(|s| s.location == Some(Where::Hop) && s.at.as_ref() == Some(&f.path[i].at))
        })
        .collect();
    for (i, hop) in f.path.iter().enumerate() {
        hop_box(
            &mut s,
            hop,
            box_x[i],
            box_y,
            charged[i],
            f.unit == "segments",
        );
    }
    s.push_str("</svg>");
    s
}

pub(super) fn hop_box(s: &mut String, hop: &PathHop, x: i64, y: i64, charged: bool, segs: bool) {
    let stroke = if charged { "#b42318" } else { "#8c959f" };
    let cx = x + BOX_W / 2;
    let _ = write!(
        s,
        "<rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"#fff\" stroke=\"{stroke}\" stroke-width=\"{}\"/>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"600\" fill=\"#1f2328\">{}</text>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#59636e\">{} · {}</text>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#1f2328\">{}</text>",
        if charged { 2 } else { 1 },
        y + 22,
        esc(&hop.at.ifname),
        y + 40,
        esc(&hop.at.dir),
        esc(&hop.role),
        y + BOX_H + 18,
        count(if segs { hop.segs } else { hop.packets })
    );
    if hop.drops > 0 {
        let _ = write!(
            s,
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" font-weight=\"600\" fill=\"#b42318\">{} dropped here</text>",
            y + BOX_H + 34,
            count(hop.drops)
        );
    }
}
