using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Dashboard;

/// <summary>The stylesheet and script, from the assembly's resources, with an ETag so a browser asks cheaply.</summary>
internal static class Assets
{
    private static readonly Dictionary<string, (byte[] Content, string Type, string ETag)> Files = Load();

    public static void Map(IEndpointRouteBuilder ui) => ui.MapGet("/assets/{name}", (HttpContext context, string name) =>
    {
        if (!Files.TryGetValue(name, out var file))
        {
            return Results.NotFound();
        }

        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers.ETag = file.ETag;
        return context.Request.Headers.IfNoneMatch.ToString() == file.ETag ? Results.StatusCode(StatusCodes.Status304NotModified) : Results.Bytes(file.Content, file.Type);
    });

    private static Dictionary<string, (byte[], string, string)> Load()
    {
        var assembly = typeof(Assets).Assembly;
        var files = new Dictionary<string, (byte[], string, string)>(StringComparer.Ordinal);
        foreach (var resource in assembly.GetManifestResourceNames().Where(n => n.StartsWith("kiln-dashboard/", StringComparison.Ordinal)))
        {
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            var content = copy.ToArray();
            var name = resource["kiln-dashboard/".Length..];
            var type = name.EndsWith(".css", StringComparison.Ordinal) ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8";
            files[name] = (content, type, $"\"{Convert.ToHexStringLower(SHA256.HashData(content))[..16]}\"");
        }

        return files;
    }
}
