#!/usr/bin/env node
// Point your own client at `linkage world up`, in Node: ask JPS for a person's pension.
//
//   linkage world up                      # in one terminal (writes data/world/world.json)
//   cd examples/node && npm install       # @grpc/grpc-js and @grpc/proto-loader
//   node query_person.js [WORLD_DIR] [ADDRESS_NUMBER]    # defaults: ../../data/world, K-1
//
// The client loads the service from the repository's .proto files at run time (no generated
// code), reads world.json to find Sakai's unified address server and the PKI directory, and
// presents the certificate of Sakai's late-stage elderly medical care system (bs.sakai.kouki):
// the server knows the caller by that certificate alone. The person must have been registered
// under ADDRESS_NUMBER by that system, and JPS must hold a pension for them (see
// examples/query_person.py and tests/test_examples.py).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPOSITORY = path.resolve(__dirname, '..', '..');
const IDENTITY = 'bs.sakai.kouki';
// Only for a world started with --insecure (local debugging): the identity is then claimed in
// this metadata key instead of proven by a certificate.
const INSECURE_IDENTITY_KEY = 'x-linkage-insecure-identity';

function loadUnifiedAddressService() {
  // Imports of linkage/v1/*.proto resolve against proto/; google/protobuf/duration.proto and
  // timestamp.proto are not in proto/: protobufjs (under proto-loader) bundles them.
  const definition = protoLoader.loadSync('linkage/v1/unified_address.proto', {
    includeDirs: [path.join(REPOSITORY, 'proto')],
    keepCase: true, // field names as in the .proto (address_number), not camelCase
    longs: String, // int64 amounts arrive as strings: no precision lost
    enums: String, // QUERY_STATUS_PROVIDED rather than 1
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).linkage.v1.UnifiedAddressService;
}

function channelCredentials(pkiDir) {
  const read = (name) => fs.readFileSync(path.join(pkiDir, name));
  // Trust only the world's CA, and present our own certificate (mutual TLS).
  return grpc.credentials.createSsl(read('ca.pem'), read(`${IDENTITY}.key`), read(`${IDENTITY}.pem`));
}

// The servers listen on 127.0.0.1 and their certificates name both 127.0.0.1 and localhost.
// TLS server name indication may not carry an IP address (RFC 6066; Node warns), so the
// server's name is checked, and sent, as localhost.
const TLS_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' };

function main() {
  const worldDir = path.resolve(process.argv[2] ?? path.join(REPOSITORY, 'data', 'world'));
  const addressNumber = process.argv[3] ?? 'K-1';
  const manifest = JSON.parse(fs.readFileSync(path.join(worldDir, 'world.json'), 'utf8'));
  const sakai = manifest.organizations.find((organization) => organization.code === 'sakai');
  const metadata = new grpc.Metadata();
  let credentials;
  let options = {};
  if (manifest.pki_dir) {
    credentials = channelCredentials(manifest.pki_dir);
    options = TLS_OPTIONS;
  } else {
    credentials = grpc.credentials.createInsecure();
    metadata.set(INSECURE_IDENTITY_KEY, IDENTITY);
  }
  const UnifiedAddressService = loadUnifiedAddressService();
  const client = new UnifiedAddressService(sakai.unified_address, credentials, options);
  const request = {
    query_id: `node-example-${Date.now()}`, // the idempotency key: a new one asks again
    procedure: 'table2:82', // 番号法 別表第二 第八十二項: premium collection
    provider: 'jps',
    data_items: ['pension_benefit'],
    address_number: addressNumber,
  };
  client.QueryPerson(request, metadata, { deadline: Date.now() + 30_000 }, (error, answer) => {
    client.close();
    if (error) {
      console.error(`QueryPerson failed: ${grpc.status[error.code]}: ${error.details}`);
      process.exitCode = 1;
      return;
    }
    console.log(JSON.stringify(answer.result, null, 2));
  });
}

main();
