// Drives the gateway with the official openai-node SDK, as a Node application would:
// only baseURL changes. argv[2] is a JSON object {sdk, baseURL, apiKey, images,
// mask, sim}: `sdk` the installed package's entry, `images` and `mask` PNG files to
// upload. Prints one JSON line per scenario: {scenario, result | error}.
const opts = JSON.parse(process.argv[2]);
const { default: OpenAI, toFile } = await import(opts.sdk);
const fs = await import("node:fs");

const client = new OpenAI({ apiKey: opts.apiKey, baseURL: opts.baseURL, maxRetries: 0, timeout: 60000 });
const file = (path, name) => toFile(fs.readFileSync(path), name, { type: "image/png" });

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

const scenarios = {
  // Several images and a mask, multipart, as image[] parts.
  edit: async () =>
    client.images.edit({
      model: "local/testcard",
      image: await Promise.all(opts.images.map((path, i) => file(path, `in${i}.png`))),
      mask: await file(opts.mask, "mask.png"),
      prompt: "put them together",
      n: 2,
      size: "1024x1024",
      response_format: "b64_json",
    }),
  // The same edit on gpt-image-1, through OpenAI's edits endpoint upstream.
  edit_gpt: async () =>
    client.images.edit({
      model: "gpt-image-1",
      image: await Promise.all(opts.images.map((path, i) => file(path, `in${i}.png`))),
      mask: await file(opts.mask, "mask.png"),
      prompt: opts.prompt,
      input_fidelity: "high",
    }),
  variation: async () =>
    client.images.createVariation({
      model: "local/testcard",
      image: await file(opts.images[0], "in.png"),
      n: 1,
      size: "256x256",
      response_format: "b64_json",
    }),
  stream_generate: async () =>
    collect(
      await client.images.generate({
        model: "gpt-image-1",
        prompt: "a lighthouse",
        stream: true,
        partial_images: 2,
      }),
    ),
  stream_edit: async () =>
    collect(
      await client.images.edit({
        model: "local/testcard",
        image: [await file(opts.images[0], "a.png"), await file(opts.images[1], "b.png")],
        mask: await file(opts.mask, "mask.png"),
        prompt: "stream it",
        stream: true,
      }),
    ),
  bad_mask: async () =>
    client.images.edit({
      model: "local/testcard",
      image: await file(opts.images[0], "a.png"),
      mask: await file(opts.images[1], "mask.png"),
      prompt: "the mask is not the image's size",
    }),
};

for (const name of opts.scenarios ?? Object.keys(scenarios)) {
  try {
    console.log(JSON.stringify({ scenario: name, result: await scenarios[name]() }));
  } catch (err) {
    console.log(JSON.stringify({ scenario: name, error: { status: err.status ?? null, body: err.error ?? String(err) } }));
  }
}
