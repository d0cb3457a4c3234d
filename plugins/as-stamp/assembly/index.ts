// as-stamp: a filter built with the AssemblyScript proxy-wasm SDK
// (@solo-io/proxy-runtime), to check that weir runs filters from another
// language's SDK. The SDK picks the root context by the plugin's root_id
// (here "as_stamp"); the filter stamps each response with its plugin
// configuration in `x-as-config`.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context } from "@solo-io/proxy-runtime";

class StampRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Stamp(context_id, this);
  }
}

class Stamp extends Context {
  constructor(context_id: u32, root_context: StampRoot) {
    super(context_id, root_context);
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-config", this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new StampRoot(context_id); }, "as_stamp");
