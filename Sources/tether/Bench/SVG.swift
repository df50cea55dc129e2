import Foundation

/// Latency CDFs as a self-contained SVG (log-scale x in µs), readable in any browser.
func cdfSVG(title: String, series: [(name: String, micros: [Double])]) -> String {
    let width = 900.0, height = 520.0, left = 70.0, right = 260.0, top = 40.0, bottom = 50.0
    let plotW = width - left - right, plotH = height - top - bottom
    let all = series.flatMap(\.micros).filter { $0 > 0 }
    let lo = pow(10, floor(log10(all.min() ?? 1)))
    let hi = pow(10, ceil(log10(max(all.max() ?? 10, lo * 10))))
    func x(_ v: Double) -> Double { left + plotW * (log10(max(v, lo)) - log10(lo)) / (log10(hi) - log10(lo)) }
    func y(_ p: Double) -> Double { top + plotH * (1 - p) }
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    var s = """
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(left)" y="22" font-size="15">\(escape(title))</text>
    <rect x="\(left)" y="\(top)" width="\(plotW)" height="\(plotH)" fill="none" stroke="#333"/>

    """
    var decade = lo
    while decade <= hi * 1.0001 {
        let px = x(decade)
        s += "<line x1=\"\(px)\" y1=\"\(top)\" x2=\"\(px)\" y2=\"\(top + plotH)\" stroke=\"#ddd\"/>"
        s += "<text x=\"\(px)\" y=\"\(top + plotH + 18)\" text-anchor=\"middle\">\(label(decade))</text>\n"
        decade *= 10
    }
    for p in stride(from: 0.0, through: 1.0, by: 0.25) {
        s += "<line x1=\"\(left)\" y1=\"\(y(p))\" x2=\"\(left + plotW)\" y2=\"\(y(p))\" stroke=\"#eee\"/>"
        s += "<text x=\"\(left - 8)\" y=\"\(y(p) + 4)\" text-anchor=\"end\">\(Int(p * 100))%</text>\n"
    }
    s += "<text x=\"\(left + plotW / 2)\" y=\"\(height - 10)\" text-anchor=\"middle\">latency (µs, log scale)</text>\n"
    for (i, serie) in series.enumerated() where !serie.micros.isEmpty {
        let sorted = serie.micros.sorted()
        var points: [String] = []
        for (k, v) in sorted.enumerated() {
            let p0 = Double(k) / Double(sorted.count), p1 = Double(k + 1) / Double(sorted.count)
            points.append("\(x(v)),\(y(p0))")
            points.append("\(x(v)),\(y(p1))")
        }
        let color = colors[i % colors.count]
        s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
        let ly = top + 16 + Double(i) * 18
        s += "<line x1=\"\(left + plotW + 15)\" y1=\"\(ly - 4)\" x2=\"\(left + plotW + 35)\" y2=\"\(ly - 4)\" stroke=\"\(color)\" stroke-width=\"3\"/>"
        s += "<text x=\"\(left + plotW + 40)\" y=\"\(ly)\">\(escape(serie.name))</text>\n"
    }
    return s + "</svg>\n"
}

private func label(_ v: Double) -> String { v >= 1000 ? "\(Int(v / 1000)) ms" : v >= 1 ? "\(Int(v)) µs" : "\(v) µs" }
private func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
}

func teardownSVG(_ r: TeardownReport) -> String {
    var series: [(String, [Double])] = []
    // Many cells (sizes × notifiers): each notifier's quiesced CDF beside the bare pidfd notice of
    // the same victims; few cells: every component.
    let many = r.cells.count > 4
    var bareShown = Set<Int>()
    for c in r.cells {
        let tag = "\(c.policy)/\(c.notifier)" + (Set(r.cells.map(\.victimMiB)).count > 1 ? " \(c.victimMiB) MiB" : "")
        if !c.bareNotice.isEmpty && bareShown.insert(c.victimMiB).inserted {
            series.append(("bare notice \(c.victimMiB) MiB", c.bareNotice.map { Double($0) / 1000 }))
        }
        let components = many ? [("quiesced", c.quiesced), ("lived on", c.livedOn)]
            : [("notice", c.notice), ("quiesced", c.quiesced), ("released", c.released), ("lived on", c.livedOn)]
        for (name, v) in components where !v.isEmpty {
            series.append(("\(tag): \(name)", v.map { Double($0) / 1000 }))
        }
    }
    return cdfSVG(title: "Teardown latency CDF — \(r.device) (\(r.backend)), \(r.victims) victims × \(r.threads) threads, \(r.mode)",
                  series: series)
}
