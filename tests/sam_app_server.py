"""`evit-sam-app`'s server on 127.0.0.1 with random weights, for the load tests.

  python -m tests.sam_app_server --port P [--encoder-size 128 --grid 16] [app flags ...]

The model is EfficientViT-SAM-L0 with random weights (`random_variables`), optionally with
a reduced encoder input and embedding grid (`evit_jax.zoo.sam_model`) so a CPU run stays
short; every other flag is `evit-sam-app`'s, with its defaults. Compiles what the load test
uses (the encoder, the decoder for 1-3 and 4-7 clicks or a box, and at --warm-size the
image-size upscaling), then serves until killed.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    import uvicorn

    from evit_jax.bench.programs import random_variables
    from evit_jax.sam.app import build_parser, create_app
    from evit_jax.sam.app_state import SamApp
    from evit_jax.zoo import sam_model

    p = build_parser()
    p.add_argument("--encoder-size", type=int, default=0)
    p.add_argument("--grid", type=int, default=0)
    p.add_argument("--warm-clicks", default="1,3", help="click counts compiled at start")
    p.add_argument("--warm-size", default="320x240", help="WxH the upscaling is compiled for")
    p.add_argument("--points-per-batch", type=int, default=0,
                   help="segment everything: clicks per decoder call (default the app's "
                        "choice; 1: the shape of a one-click prompt, nothing more to compile)")
    argv = ["--weights", "-"] + argv  # the weights are random here
    args = p.parse_args(argv)
    model = sam_model(args.model, args.encoder_size, args.grid)
    sam = SamApp(model, random_variables(model, seed=0), max_sessions=args.max_sessions,
                 session_memory_mb=args.session_memory_mb,
                 max_upload_bytes=int(args.max_upload_mb * 2**20),
                 max_pixels=int(args.max_megapixels * 1e6),
                 max_queued_uploads=args.max_queued_uploads,
                 upload_timeout_s=args.upload_timeout, prompt_workers=args.prompt_workers,
                 points_per_side=args.points_per_side,
                 generator={"pred_iou_thresh": args.pred_iou_thresh,
                            "stability_score_thresh": args.stability_score_thresh,
                            **({"points_per_batch": args.points_per_batch}
                               if args.points_per_batch else {})})
    w, h = (int(v) for v in args.warm_size.split("x"))
    clicks = [int(c) for c in args.warm_clicks.split(",")]
    seconds = sam.warm([(c, True) for c in clicks], everything=True, image_size=(h, w))
    print(f"compiled in {seconds:.1f} s", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(sam), host="127.0.0.1", port=args.port,
                                           log_level="warning", access_log=False))
    print(f"serving on 127.0.0.1:{args.port}", flush=True)  # the test polls /api/status
    server.run()


if __name__ == "__main__":
    main(sys.argv[1:])
