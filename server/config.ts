import {
  boolField,
  type ConfigOf,
  encodingFields,
  field,
  type PoolDefaults,
  poolFields,
  program,
  tierFields,
} from "../core/config.js";

const pool: PoolDefaults = { workers: 2, maxBatch: 32, maxQueue: 1024 };

/** `ddnn server`: every flag, environment variable, file key and default it has. */
export const serverConfig = program({
  ...tierFields,
  stages: tierFields.stages.with({ defaultText: "every stage but the first" }),
  ...encodingFields,
  ...poolFields(pool),
  fullModel: field(boolField.default(true), {
    help: "also open the stages before --stages, so POST /v2/models/{name}/infer runs the whole model (the Server Only configuration); false opens only this tier's stages",
    value: "BOOL",
  }),
});

export const serverFields = serverConfig.fields;
export const serverSchema = serverConfig.schema;
export type ServerConfig = ConfigOf<typeof serverConfig>;
