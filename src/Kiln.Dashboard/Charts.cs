using System.Globalization;
using System.Text;
using static Kiln.Dashboard.Html;

namespace Kiln.Dashboard;

/// <summary>Bar charts as inline SVG, drawn on the server: no chart library, nothing to load, readable without script.</summary>
internal static class Charts
{
    private const int Width = 720;
    private const int Height = 200;
    private const int Left = 48;
    private const int Bottom = 24;

    public static string Bars(string id, string title, IReadOnlyList<(string Label, double Value)> points, string format)
    {
        var max = points.Count == 0 ? 0 : points.Max(p => p.Value);
        // Whole numbers (counts) get an axis of whole steps.
        var whole = format == "0";
        var top = max <= 0 ? (whole ? 4 : 1) : whole ? Math.Max(4, Math.Ceiling(max / 4) * 4) : NiceCeiling(max);
        var plotWidth = Width - Left - 8;
        var plotHeight = Height - Bottom - 8;
        var slot = points.Count == 0 ? plotWidth : plotWidth / (double)points.Count;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"""
            <figure class="chart card" id="{id}">
            <figcaption>{E(title)}</figcaption>
            <svg viewBox="0 0 {Width} {Height}" role="img" aria-labelledby="{id}-title" preserveAspectRatio="none">
            <title id="{id}-title">{E(title)}: {E(string.Join(", ", points.Where(p => p.Value > 0).Select(p => $"{p.Label} {F(p.Value, format)}")))}</title>
            """);
        for (var i = 0; i <= 4; i++)
        {
            var y = 8 + plotHeight - plotHeight * i / 4.0;
            svg.Append(CultureInfo.InvariantCulture, $"<line class=\"grid\" x1=\"{Left}\" x2=\"{Width - 8}\" y1=\"{F(y)}\" y2=\"{F(y)}\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text class=\"axis\" x=\"{Left - 6}\" y=\"{F(y + 4)}\" text-anchor=\"end\">{F(top * i / 4, format)}</text>");
        }

        for (var i = 0; i < points.Count; i++)
        {
            var (label, value) = points[i];
            var height = plotHeight * value / top;
            var x = Left + slot * i + slot * 0.15;
            svg.Append(CultureInfo.InvariantCulture,
                $"<rect class=\"bar\" x=\"{F(x)}\" y=\"{F(8 + plotHeight - height)}\" width=\"{F(slot * 0.7)}\" height=\"{F(height)}\"><title>{E(label)}: {F(value, format)}</title></rect>");
            // A label under every few bars: the first, the last, and evenly between.
            if (i == 0 || i == points.Count - 1 || (points.Count > 12 ? i % 7 == 0 && points.Count - 1 - i >= 4 : true))
            {
                svg.Append(CultureInfo.InvariantCulture, $"<text class=\"axis\" x=\"{F(x + slot * 0.35)}\" y=\"{Height - 6}\" text-anchor=\"middle\">{E(label.Length > 7 ? label[5..] : label)}</text>");
            }
        }

        return svg.Append("</svg></figure>").ToString();
    }

    // 1, 2 or 5 times a power of ten, at least the value: round numbers on the axis.
    private static double NiceCeiling(double value)
    {
        var power = Math.Pow(10, Math.Floor(Math.Log10(value)));
        foreach (var step in new[] { 1, 2, 5, 10 })
        {
            if (step * power >= value)
            {
                return step * power;
            }
        }

        return 10 * power;
    }
}
