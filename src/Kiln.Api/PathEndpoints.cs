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

        api.MapGet("/pins", async (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.StoreRead);
            using var view = store.OpenView(caller.Caller);
            return TypedResults.Ok((await view.PinsAsync(context.RequestAborted).ConfigureAwait(false)).Select(PinDocument.Of).ToList());
        }).WithSummary("The account's pins: paths it keeps whatever garbage collection and retention would do (needs store:read).");

        api.MapPost("/pins", async (HttpContext context, PinRequest request) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.StoreWrite);
            if (request.Path is null || !Kiln.Nix.StorePaths.StorePath.TryParse(request.Path, out var path))
            {
                throw new KilnException(ErrorKind.Invalid, "path is a store path: /nix/store/HASH-NAME");
            }

            using var view = store.OpenView(caller.Caller);
            var pin = await view.PinAsync(path, request.Name, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Created($"{KilnApi.Prefix}/pins", PinDocument.Of(pin));
        }).WithSummary("Pins a path of the account's store (and its closure) under a name (default: the path's name); a pin of that name moves to it (needs store:write).")
          .ProducesProblem(StatusCodes.Status400BadRequest).ProducesProblem(StatusCodes.Status404NotFound);

        api.MapDelete("/pins", async (HttpContext context, string name) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.StoreWrite);
            using var view = store.OpenView(caller.Caller);
            await view.UnpinAsync(name, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.NoContent();
        }).WithSummary("Removes a pin: ?name= (needs store:write); its path goes at the next collection unless something else holds it.")
          .ProducesProblem(StatusCodes.Status404NotFound);
    }
}
