/**
 * The project's DynamoDB tables, built from the shared table definitions
 * (lambdas/shared/tables.ts) so the keys and indexes the code queries are the
 * keys and indexes that exist. On-demand billing, point-in-time recovery.
 */
import type { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';
import type { KeyAttribute, TableDefinition } from '../../lambdas/shared/tables';

export interface ProjectTablesProps {
  /** The table and index definitions (lambdas/shared/tables.ts), the same the handlers and the local stack read. */
  readonly definitions: readonly TableDefinition[];
  /** RETAIN keeps the data when the stack goes; DESTROY deletes it (dev). */
  readonly removalPolicy: RemovalPolicy;
  /** DynamoDB deletion protection: refuses DeleteTable even outside CloudFormation. */
  readonly deletionProtection: boolean;
}

function attribute(key: KeyAttribute): dynamodb.Attribute {
  return { name: key.name, type: key.type === 'N' ? dynamodb.AttributeType.NUMBER : dynamodb.AttributeType.STRING };
}

/** One table per definition, addressable by its definition id (e.g. `Sandboxes`). */
export class ProjectTables extends Construct {
  /** Tables by definition id. */
  public readonly byId: ReadonlyMap<string, dynamodb.Table>;
  /** Definition and table pairs, in definition order. */
  public readonly entries: readonly { definition: TableDefinition; table: dynamodb.Table }[];

  constructor(scope: Construct, id: string, props: ProjectTablesProps) {
    super(scope, id);
    const entries = props.definitions.map((definition) => {
      const table = new dynamodb.Table(this, definition.id, {
        partitionKey: attribute(definition.partitionKey),
        ...(definition.sortKey ? { sortKey: attribute(definition.sortKey) } : {}),
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        // AWS-owned key: encrypted at rest at no cost and no KMS calls on the request path.
        encryption: dynamodb.TableEncryption.DEFAULT,
        ...(definition.timeToLiveAttribute ? { timeToLiveAttribute: definition.timeToLiveAttribute } : {}),
        removalPolicy: props.removalPolicy,
        deletionProtection: props.deletionProtection,
      });
      for (const index of definition.indexes) {
        const projection =
          index.projection === 'ALL'
            ? { projectionType: dynamodb.ProjectionType.ALL }
            : index.projection === 'KEYS_ONLY'
              ? { projectionType: dynamodb.ProjectionType.KEYS_ONLY }
              : { projectionType: dynamodb.ProjectionType.INCLUDE, nonKeyAttributes: [...index.projection] };
        table.addGlobalSecondaryIndex({
          indexName: index.name,
          partitionKey: attribute(index.partitionKey),
          ...(index.sortKey ? { sortKey: attribute(index.sortKey) } : {}),
          ...projection,
        });
      }
      return { definition, table };
    });
    this.entries = entries;
    this.byId = new Map(entries.map((e) => [e.definition.id, e.table]));
  }

  /** The table built from `definition`; throws if it is not one of this construct's. */
  table(definition: TableDefinition): dynamodb.Table {
    const table = this.byId.get(definition.id);
    if (!table) throw new Error(`no table for definition "${definition.id}"`);
    return table;
  }
}
