using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Accounts;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Api;

/// <summary><c>/paths</c>: store paths as the caller's view has them.</summary>
internal static class PathEndpoints
{
    public static void Map(RouteGroupBuilder api, KilnStore store)
    {
        api.MapGet("/paths/{hash}", async (HttpContext context, string hash) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.StoreRead);
            if (!Kiln.Nix.StorePaths.StorePath.IsHashPart(hash))
            {
                throw new KilnException(ErrorKind.Invalid, "a path is named by its hash: the 32 characters after /nix/store/");
            }

            using var view = store.OpenView(caller.Caller);
            var record = await view.FindByHashPartAsync(hash, context.RequestAborted).ConfigureAwait(false)
                ?? throw new KilnException(ErrorKind.NotFound, "no path with that hash is in the account's store");
            return TypedResults.Ok(PathDocument.Of(record));
        }).WithSummary("A store path by its hash (the 32 characters after /nix/store/), as the account's view has it (needs store:read).")
          .ProducesProblem(StatusCodes.Status404NotFound);
    }
}
