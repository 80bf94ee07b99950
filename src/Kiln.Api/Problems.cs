using Kiln.Protocol;
using Microsoft.AspNetCore.Http;

namespace Kiln.Api;

/// <summary>
/// The API's errors, as RFC 7807 problem documents (<c>application/problem+json</c>) with a stable code a program can
/// switch on (<c>code</c>, also in <c>type</c> as <c>urn:kiln:problem:CODE</c>) and a sentence for people
/// (<c>detail</c>). Kiln's error kinds map to statuses in one place (<see cref="ErrorKinds.HttpStatus"/>).
/// </summary>
public static class Problems
{
    /// <summary>The stable code of an error kind.</summary>
    public static string Code(ErrorKind kind) => kind switch
    {
        ErrorKind.Invalid => "invalid",
        ErrorKind.NotFound => "not-found",
        ErrorKind.Forbidden => "forbidden",
        ErrorKind.Conflict => "conflict",
        ErrorKind.TooLarge => "too-large",
        ErrorKind.Unavailable => "unavailable",
        _ => "failed",
    };

    public static IResult Of(KilnException error)
    {
        ArgumentNullException.ThrowIfNull(error);
        return Of(ErrorKinds.HttpStatus(error.Kind), Code(error.Kind), error.Message);
    }

    public static IResult Of(int status, string code, string detail) =>
        TypedResults.Problem(detail: detail, statusCode: status, type: $"urn:kiln:problem:{code}", extensions: new Dictionary<string, object?> { ["code"] = code });

    /// <summary>No token, or one that is malformed, unknown, revoked or expired (all alike: nothing tells which).</summary>
    public static IResult Unauthorized(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        context.Response.Headers.WWWAuthenticate = "Bearer realm=\"kiln\"";
        return Of(StatusCodes.Status401Unauthorized, "unauthorized", "this request needs a valid token: 'Authorization: Bearer TOKEN' (see 'kiln token create')");
    }
}
