# ruff: noqa: E501 -- GitHub's schema, verbatim: its lines are as long as GitHub wrote them
"""A subset of GitHub's public GraphQL schema: what the API double answers.

Copied mechanically from GitHub's published schema (the octokit/graphql-schema snapshot of
2026-07-22, ``schema.graphql``): every type, field and argument here has GitHub's name, type,
nullability and default value. Only the fields clients use against the double are kept (the
ones Debian's gh 2.23.0 asks for in its pull-request, repository and workflow commands, and
the mutations the gateway's policy is about), descriptions and directives are dropped (graphql-
core refuses GitHub's deprecation of implementations of non-deprecated interface fields; no
query's meaning depends on it), and unions list only their members kept here. Input objects
and enums are whole. To add a field, copy it from GitHub's schema, never invent one.
"""

SDL = """
interface Actor {
  avatarUrl(size: Int): URI!
  login: String!
  resourcePath: URI!
  url: URI!
}

input AddCommentInput {
  body: String!
  clientMutationId: String
  subjectId: ID!
}

type AddCommentPayload {
  clientMutationId: String
  commentEdge: IssueCommentEdge
  subject: Node
  timelineEdge: IssueTimelineItemEdge
}

input AddLabelsToLabelableInput {
  clientMutationId: String
  labelIds: [ID!]!
  labelableId: ID!
}

type AddLabelsToLabelablePayload {
  clientMutationId: String
  labelable: Labelable
}

type Bot implements Actor & Node {
  avatarUrl(size: Int): URI!
  databaseId: Int
  id: ID!
  login: String!
  resourcePath: URI!
  url: URI!
}

type BranchProtectionRule implements Node {
  allowsDeletions: Boolean!
  allowsForcePushes: Boolean!
  blocksCreations: Boolean!
  dismissesStaleReviews: Boolean!
  id: ID!
  isAdminEnforced: Boolean!
  lockBranch: Boolean!
  pattern: String!
  repository: Repository
  requireLastPushApproval: Boolean!
  requiredApprovingReviewCount: Int
  requiredStatusCheckContexts: [String]
  requiresApprovingReviews: Boolean!
  requiresCodeOwnerReviews: Boolean!
  requiresCommitSignatures: Boolean!
  requiresConversationResolution: Boolean!
  requiresLinearHistory: Boolean!
  requiresStatusChecks: Boolean!
  requiresStrictStatusChecks: Boolean!
  restrictsPushes: Boolean!
  restrictsReviewDismissals: Boolean!
}

type BranchProtectionRuleConnection {
  edges: [BranchProtectionRuleEdge]
  nodes: [BranchProtectionRule]
  pageInfo: PageInfo!
  totalCount: Int!
}

type BranchProtectionRuleEdge {
  cursor: String!
  node: BranchProtectionRule
}

enum CheckConclusionState {
  ACTION_REQUIRED
  CANCELLED
  FAILURE
  NEUTRAL
  SKIPPED
  STALE
  STARTUP_FAILURE
  SUCCESS
  TIMED_OUT
}

type CheckRun implements Node {
  checkSuite: CheckSuite!
  completedAt: DateTime
  conclusion: CheckConclusionState
  detailsUrl: URI
  id: ID!
  isRequired(pullRequestId: ID, pullRequestNumber: Int): Boolean!
  name: String!
  startedAt: DateTime
  status: CheckStatusState!
}

enum CheckStatusState {
  COMPLETED
  IN_PROGRESS
  PENDING
  QUEUED
  REQUESTED
  WAITING
}

type CheckSuite implements Node {
  id: ID!
  workflowRun: WorkflowRun
}

input ClosePullRequestInput {
  clientMutationId: String
  pullRequestId: ID!
}

type ClosePullRequestPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

enum CommentAuthorAssociation {
  COLLABORATOR
  CONTRIBUTOR
  FIRST_TIMER
  FIRST_TIME_CONTRIBUTOR
  MANNEQUIN
  MEMBER
  NONE
  OWNER
}

type Commit implements GitObject & Node {
  abbreviatedOid: String!
  authoredDate: DateTime!
  authors(after: String, before: String, first: Int, last: Int): GitActorConnection!
  committedDate: DateTime!
  id: ID!
  message: String!
  messageBody: String!
  messageHeadline: String!
  oid: GitObjectID!
  statusCheckRollup: StatusCheckRollup
  url: URI!
}

input ConvertPullRequestToDraftInput {
  clientMutationId: String
  pullRequestId: ID!
}

type ConvertPullRequestToDraftPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

input CreateBranchProtectionRuleInput {
  allowsDeletions: Boolean
  allowsForcePushes: Boolean
  blocksCreations: Boolean
  bypassForcePushActorIds: [ID!]
  bypassPullRequestActorIds: [ID!]
  clientMutationId: String
  dismissesStaleReviews: Boolean
  isAdminEnforced: Boolean
  lockAllowsFetchAndMerge: Boolean
  lockBranch: Boolean
  pattern: String!
  pushActorIds: [ID!]
  repositoryId: ID!
  requireLastPushApproval: Boolean
  requiredApprovingReviewCount: Int
  requiredDeploymentEnvironments: [String!]
  requiredStatusCheckContexts: [String!]
  requiredStatusChecks: [RequiredStatusCheckInput!]
  requiresApprovingReviews: Boolean
  requiresCodeOwnerReviews: Boolean
  requiresCommitSignatures: Boolean
  requiresConversationResolution: Boolean
  requiresDeployments: Boolean
  requiresLinearHistory: Boolean
  requiresStatusChecks: Boolean
  requiresStrictStatusChecks: Boolean
  restrictsPushes: Boolean
  restrictsReviewDismissals: Boolean
  reviewDismissalActorIds: [ID!]
}

type CreateBranchProtectionRulePayload {
  branchProtectionRule: BranchProtectionRule
  clientMutationId: String
}

input CreatePullRequestInput {
  baseRefName: String!
  body: String
  clientMutationId: String
  draft: Boolean = false
  headRefName: String!
  headRepositoryId: ID
  maintainerCanModify: Boolean = true
  repositoryId: ID!
  title: String!
}

type CreatePullRequestPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

input CreateRefInput {
  clientMutationId: String
  name: String!
  oid: GitObjectID!
  repositoryId: ID!
}

type CreateRefPayload {
  clientMutationId: String
  ref: Ref
}

scalar DateTime

input DeleteBranchProtectionRuleInput {
  branchProtectionRuleId: ID!
  clientMutationId: String
}

type DeleteBranchProtectionRulePayload {
  clientMutationId: String
}

input DeleteRefInput {
  clientMutationId: String
  refId: ID!
}

type DeleteRefPayload {
  clientMutationId: String
}

type GitActor {
  email: String
  name: String
  user: User
}

type GitActorConnection {
  edges: [GitActorEdge]
  nodes: [GitActor]
  pageInfo: PageInfo!
  totalCount: Int!
}

type GitActorEdge {
  cursor: String!
  node: GitActor
}

interface GitObject {
  abbreviatedOid: String!
  id: ID!
  oid: GitObjectID!
}

scalar GitObjectID

scalar GitSSHRemote

type IssueComment implements Node {
  author: Actor
  authorAssociation: CommentAuthorAssociation!
  body: String!
  bodyText: String!
  createdAt: DateTime!
  databaseId: Int
  id: ID!
  includesCreatedEdit: Boolean!
  isMinimized: Boolean!
  minimizedReason: String
  pullRequest: PullRequest
  reactionGroups: [ReactionGroup!]
  repository: Repository!
  updatedAt: DateTime!
  url: URI!
  viewerDidAuthor: Boolean!
}

type IssueCommentConnection {
  edges: [IssueCommentEdge]
  nodes: [IssueComment]
  pageInfo: PageInfo!
  totalCount: Int!
}

type IssueCommentEdge {
  cursor: String!
  node: IssueComment
}

input IssueCommentOrder {
  direction: OrderDirection!
  field: IssueCommentOrderField!
}

enum IssueCommentOrderField {
  UPDATED_AT
}

union IssueOrPullRequest = PullRequest

input IssueOrder {
  direction: OrderDirection!
  field: IssueOrderField!
}

enum IssueOrderField {
  COMMENTS
  CREATED_AT
  UPDATED_AT
}

type IssueTimelineItemEdge {
  cursor: String!
}

type Label implements Node {
  color: String!
  description: String
  id: ID!
  isDefault: Boolean!
  name: String!
}

type LabelConnection {
  edges: [LabelEdge]
  nodes: [Label]
  pageInfo: PageInfo!
  totalCount: Int!
}

type LabelEdge {
  cursor: String!
  node: Label
}

input LabelOrder {
  direction: OrderDirection!
  field: LabelOrderField!
}

enum LabelOrderField {
  CREATED_AT
  NAME
}

interface Labelable {
  labels(after: String, before: String, first: Int, last: Int, orderBy: LabelOrder = { field: CREATED_AT, direction: ASC }): LabelConnection
}

input MarkPullRequestReadyForReviewInput {
  clientMutationId: String
  pullRequestId: ID!
}

type MarkPullRequestReadyForReviewPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

input MergePullRequestInput {
  authorEmail: String
  clientMutationId: String
  commitBody: String
  commitHeadline: String
  expectedHeadOid: GitObjectID
  mergeMethod: PullRequestMergeMethod = MERGE
  pullRequestId: ID!
}

type MergePullRequestPayload {
  actor: Actor
  clientMutationId: String
  pullRequest: PullRequest
}

enum MergeStateStatus {
  BEHIND
  BLOCKED
  CLEAN
  DIRTY
  DRAFT @deprecated(reason: "DRAFT state will be removed from this enum and `isDraft` should be used instead Use PullRequest.isDraft instead. Removal on 2021-01-01 UTC.")
  HAS_HOOKS
  UNKNOWN
  UNSTABLE
}

enum MergeableState {
  CONFLICTING
  MERGEABLE
  UNKNOWN
}

type Milestone implements Node {
  description: String
  dueOn: DateTime
  id: ID!
  number: Int!
  title: String!
}

type Mutation {
  addComment(input: AddCommentInput!): AddCommentPayload
  addLabelsToLabelable(input: AddLabelsToLabelableInput!): AddLabelsToLabelablePayload
  closePullRequest(input: ClosePullRequestInput!): ClosePullRequestPayload
  convertPullRequestToDraft(input: ConvertPullRequestToDraftInput!): ConvertPullRequestToDraftPayload
  createBranchProtectionRule(input: CreateBranchProtectionRuleInput!): CreateBranchProtectionRulePayload
  createPullRequest(input: CreatePullRequestInput!): CreatePullRequestPayload
  createRef(input: CreateRefInput!): CreateRefPayload
  deleteBranchProtectionRule(input: DeleteBranchProtectionRuleInput!): DeleteBranchProtectionRulePayload
  deleteRef(input: DeleteRefInput!): DeleteRefPayload
  markPullRequestReadyForReview(input: MarkPullRequestReadyForReviewInput!): MarkPullRequestReadyForReviewPayload
  mergePullRequest(input: MergePullRequestInput!): MergePullRequestPayload
  removeLabelsFromLabelable(input: RemoveLabelsFromLabelableInput!): RemoveLabelsFromLabelablePayload
  reopenPullRequest(input: ReopenPullRequestInput!): ReopenPullRequestPayload
  requestReviews(input: RequestReviewsInput!): RequestReviewsPayload
  updateBranchProtectionRule(input: UpdateBranchProtectionRuleInput!): UpdateBranchProtectionRulePayload
  updatePullRequest(input: UpdatePullRequestInput!): UpdatePullRequestPayload
  updateRef(input: UpdateRefInput!): UpdateRefPayload
}

interface Node {
  id: ID!
}

enum OrderDirection {
  ASC
  DESC
}

type Organization implements Actor & Node & RepositoryOwner {
  avatarUrl(size: Int): URI!
  databaseId: Int
  id: ID!
  login: String!
  name: String
  resourcePath: URI!
  teams(after: String, before: String, first: Int, last: Int, ldapMapped: Boolean, notificationSetting: TeamNotificationSetting, orderBy: TeamOrder, privacy: TeamPrivacy, query: String, role: TeamRole, rootTeamsOnly: Boolean = false, userLogins: [String!]): TeamConnection!
  url: URI!
}

type PageInfo {
  endCursor: String
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
}

enum PatchStatus {
  ADDED
  CHANGED
  COPIED
  DELETED
  MODIFIED
  RENAMED
}

type Project implements Node {
  id: ID!
  name: String!
}

type ProjectCard implements Node {
  column: ProjectColumn
  id: ID!
  project: Project!
}

enum ProjectCardArchivedState {
  ARCHIVED
  NOT_ARCHIVED
}

type ProjectCardConnection {
  nodes: [ProjectCard]
  totalCount: Int!
}

type ProjectColumn implements Node {
  id: ID!
  name: String!
}

type ProjectV2 implements Node {
  id: ID!
  title: String!
}

type ProjectV2Item implements Node {
  id: ID!
  project: ProjectV2!
}

type ProjectV2ItemConnection {
  nodes: [ProjectV2Item]
  pageInfo: PageInfo!
}

type PullRequest implements Labelable & Node {
  additions: Int!
  assignees(after: String, before: String, first: Int, last: Int): UserConnection!
  author: Actor
  authorAssociation: CommentAuthorAssociation!
  baseRef: Ref
  baseRefName: String!
  baseRefOid: GitObjectID!
  baseRepository: Repository
  body: String!
  bodyText: String!
  changedFiles: Int!
  closed: Boolean!
  closedAt: DateTime
  comments(after: String, before: String, first: Int, last: Int, orderBy: IssueCommentOrder): IssueCommentConnection!
  commits(after: String, before: String, first: Int, last: Int): PullRequestCommitConnection!
  createdAt: DateTime!
  databaseId: Int
  deletions: Int!
  files(after: String, before: String, first: Int, last: Int): PullRequestChangedFileConnection
  headRef: Ref
  headRefName: String!
  headRefOid: GitObjectID!
  headRepository: Repository
  headRepositoryOwner: RepositoryOwner
  id: ID!
  isCrossRepository: Boolean!
  isDraft: Boolean!
  isInMergeQueue: Boolean!
  isMergeQueueEnabled: Boolean!
  labels(after: String, before: String, first: Int, last: Int, orderBy: LabelOrder = { field: CREATED_AT, direction: ASC }): LabelConnection
  latestReviews(after: String, before: String, first: Int, last: Int): PullRequestReviewConnection
  locked: Boolean!
  maintainerCanModify: Boolean!
  mergeCommit: Commit
  mergeStateStatus: MergeStateStatus!
  mergeable: MergeableState!
  merged: Boolean!
  mergedAt: DateTime
  mergedBy: Actor
  milestone: Milestone
  number: Int!
  permalink: URI!
  potentialMergeCommit: Commit
  projectCards(after: String, archivedStates: [ProjectCardArchivedState] = [ARCHIVED, NOT_ARCHIVED], before: String, first: Int, last: Int): ProjectCardConnection!
  projectItems(after: String, before: String, first: Int, includeArchived: Boolean = true, last: Int): ProjectV2ItemConnection!
  reactionGroups: [ReactionGroup!]
  repository: Repository!
  resourcePath: URI!
  reviewDecision: PullRequestReviewDecision
  reviewRequests(after: String, before: String, first: Int, last: Int): ReviewRequestConnection
  reviews(after: String, author: String, before: String, first: Int, last: Int, states: [PullRequestReviewState!]): PullRequestReviewConnection
  state: PullRequestState!
  title: String!
  updatedAt: DateTime!
  url: URI!
  viewerDidAuthor: Boolean!
}

type PullRequestChangedFile {
  additions: Int!
  changeType: PatchStatus!
  deletions: Int!
  path: String!
}

type PullRequestChangedFileConnection {
  edges: [PullRequestChangedFileEdge]
  nodes: [PullRequestChangedFile]
  pageInfo: PageInfo!
  totalCount: Int!
}

type PullRequestChangedFileEdge {
  cursor: String!
  node: PullRequestChangedFile
}

type PullRequestCommit implements Node {
  commit: Commit!
  id: ID!
  url: URI!
}

type PullRequestCommitConnection {
  edges: [PullRequestCommitEdge]
  nodes: [PullRequestCommit]
  pageInfo: PageInfo!
  totalCount: Int!
}

type PullRequestCommitEdge {
  cursor: String!
  node: PullRequestCommit
}

type PullRequestConnection {
  edges: [PullRequestEdge]
  nodes: [PullRequest]
  pageInfo: PageInfo!
  totalCount: Int!
}

type PullRequestEdge {
  cursor: String!
  node: PullRequest
}

enum PullRequestMergeMethod {
  MERGE
  REBASE
  SQUASH
}

type PullRequestReview implements Node {
  author: Actor
  authorAssociation: CommentAuthorAssociation!
  body: String!
  commit: Commit
  id: ID!
  reactionGroups: [ReactionGroup!]
  state: PullRequestReviewState!
  submittedAt: DateTime
}

type PullRequestReviewConnection {
  nodes: [PullRequestReview]
  pageInfo: PageInfo!
  totalCount: Int!
}

enum PullRequestReviewDecision {
  APPROVED
  CHANGES_REQUESTED
  REVIEW_REQUIRED
}

enum PullRequestReviewState {
  APPROVED
  CHANGES_REQUESTED
  COMMENTED
  DISMISSED
  PENDING
}

enum PullRequestState {
  CLOSED
  MERGED
  OPEN
}

enum PullRequestUpdateState {
  CLOSED
  OPEN
}

type Query implements Node {
  id: ID!
  node(id: ID!): Node
  nodes(ids: [ID!]!): [Node]!
  organization(login: String!): Organization
  rateLimit(dryRun: Boolean = false): RateLimit
  repository(followRenames: Boolean = true, name: String!, owner: String!): Repository
  search(after: String, before: String, first: Int, last: Int, query: String!, type: SearchType!): SearchResultItemConnection!
  user(login: String!): User
  viewer: User!
}

type RateLimit {
  cost: Int!
  limit: Int!
  nodeCount: Int!
  remaining: Int!
  resetAt: DateTime!
  used: Int!
}

type ReactingUserConnection {
  totalCount: Int!
}

enum ReactionContent {
  CONFUSED
  EYES
  HEART
  HOORAY
  LAUGH
  ROCKET
  THUMBS_DOWN
  THUMBS_UP
}

type ReactionGroup {
  content: ReactionContent!
  users(after: String, before: String, first: Int, last: Int): ReactingUserConnection!
}

type Ref implements Node {
  associatedPullRequests(after: String, baseRefName: String, before: String, first: Int, headRefName: String, labels: [String!], last: Int, orderBy: IssueOrder, states: [PullRequestState!]): PullRequestConnection!
  branchProtectionRule: BranchProtectionRule
  id: ID!
  name: String!
  prefix: String!
  repository: Repository!
  target: GitObject
}

type RefConnection {
  edges: [RefEdge]
  nodes: [Ref]
  pageInfo: PageInfo!
  totalCount: Int!
}

type RefEdge {
  cursor: String!
  node: Ref
}

input RefOrder {
  direction: OrderDirection!
  field: RefOrderField!
}

enum RefOrderField {
  ALPHABETICAL
  TAG_COMMIT_DATE
}

input RemoveLabelsFromLabelableInput {
  clientMutationId: String
  labelIds: [ID!]!
  labelableId: ID!
}

type RemoveLabelsFromLabelablePayload {
  clientMutationId: String
  labelable: Labelable
}

input ReopenPullRequestInput {
  clientMutationId: String
  pullRequestId: ID!
}

type ReopenPullRequestPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

type Repository implements Node {
  assignableUsers(after: String, before: String, first: Int, last: Int, query: String): UserConnection!
  branchProtectionRules(after: String, before: String, first: Int, last: Int): BranchProtectionRuleConnection!
  createdAt: DateTime!
  databaseId: Int
  defaultBranchRef: Ref
  deleteBranchOnMerge: Boolean!
  description: String
  hasIssuesEnabled: Boolean!
  hasProjectsEnabled: Boolean!
  hasWikiEnabled: Boolean!
  id: ID!
  isArchived: Boolean!
  isDisabled: Boolean!
  isEmpty: Boolean!
  isFork: Boolean!
  isInOrganization: Boolean!
  isLocked: Boolean!
  isMirror: Boolean!
  isPrivate: Boolean!
  isTemplate: Boolean!
  issueOrPullRequest(number: Int!): IssueOrPullRequest
  label(name: String!): Label
  labels(after: String, before: String, first: Int, last: Int, orderBy: LabelOrder = { field: CREATED_AT, direction: ASC }, query: String): LabelConnection
  mentionableUsers(after: String, before: String, first: Int, last: Int, query: String): UserConnection!
  mergeCommitAllowed: Boolean!
  name: String!
  nameWithOwner: String!
  owner: RepositoryOwner!
  parent: Repository
  pullRequest(number: Int!): PullRequest
  pullRequests(after: String, baseRefName: String, before: String, first: Int, headRefName: String, labels: [String!], last: Int, orderBy: IssueOrder, states: [PullRequestState!]): PullRequestConnection!
  pushedAt: DateTime
  rebaseMergeAllowed: Boolean!
  ref(qualifiedName: String!): Ref
  refs(after: String, before: String, direction: OrderDirection, first: Int, last: Int, orderBy: RefOrder, query: String, refPrefix: String!): RefConnection
  squashMergeAllowed: Boolean!
  sshUrl: GitSSHRemote!
  updatedAt: DateTime!
  url: URI!
  viewerCanAdminister: Boolean!
  viewerDefaultMergeMethod: PullRequestMergeMethod!
  viewerPermission: RepositoryPermission
  visibility: RepositoryVisibility!
}

interface RepositoryOwner {
  avatarUrl(size: Int): URI!
  id: ID!
  login: String!
  resourcePath: URI!
  url: URI!
}

enum RepositoryPermission {
  ADMIN
  MAINTAIN
  READ
  TRIAGE
  WRITE
}

enum RepositoryVisibility {
  INTERNAL
  PRIVATE
  PUBLIC
}

input RequestReviewsInput {
  clientMutationId: String
  pullRequestId: ID!
  teamIds: [ID!]
  union: Boolean = false
  userIds: [ID!]
}

type RequestReviewsPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

union RequestedReviewer = Bot | Team | User

input RequiredStatusCheckInput {
  appId: ID
  context: String!
}

type ReviewRequest implements Node {
  asCodeOwner: Boolean!
  id: ID!
  requestedReviewer: RequestedReviewer
}

type ReviewRequestConnection {
  edges: [ReviewRequestEdge]
  nodes: [ReviewRequest]
  pageInfo: PageInfo!
  totalCount: Int!
}

type ReviewRequestEdge {
  cursor: String!
  node: ReviewRequest
}

union SearchResultItem = Organization | PullRequest | Repository | User

type SearchResultItemConnection {
  edges: [SearchResultItemEdge]
  issueCount: Int!
}

type SearchResultItemEdge {
  node: SearchResultItem
}

enum SearchType {
  DISCUSSION
  ISSUE
  REPOSITORY
  USER
}

type StatusCheckRollup implements Node {
  contexts(after: String, before: String, first: Int, last: Int): StatusCheckRollupContextConnection!
  id: ID!
}

union StatusCheckRollupContext = CheckRun | StatusContext

type StatusCheckRollupContextConnection {
  nodes: [StatusCheckRollupContext]
  pageInfo: PageInfo!
}

type StatusContext implements Node {
  context: String!
  createdAt: DateTime!
  id: ID!
  isRequired(pullRequestId: ID, pullRequestNumber: Int): Boolean!
  state: StatusState!
  targetUrl: URI
}

enum StatusState {
  ERROR
  EXPECTED
  FAILURE
  PENDING
  SUCCESS
}

type Team implements Node {
  id: ID!
  name: String!
  organization: Organization!
  slug: String!
}

type TeamConnection {
  edges: [TeamEdge]
  nodes: [Team]
  pageInfo: PageInfo!
  totalCount: Int!
}

type TeamEdge {
  cursor: String!
  node: Team
}

enum TeamNotificationSetting {
  NOTIFICATIONS_DISABLED
  NOTIFICATIONS_ENABLED
}

input TeamOrder {
  direction: OrderDirection!
  field: TeamOrderField!
}

enum TeamOrderField {
  NAME
}

enum TeamPrivacy {
  SECRET
  VISIBLE
}

enum TeamRole {
  ADMIN
  MEMBER
}

scalar URI

input UpdateBranchProtectionRuleInput {
  allowsDeletions: Boolean
  allowsForcePushes: Boolean
  blocksCreations: Boolean
  branchProtectionRuleId: ID!
  bypassForcePushActorIds: [ID!]
  bypassPullRequestActorIds: [ID!]
  clientMutationId: String
  dismissesStaleReviews: Boolean
  isAdminEnforced: Boolean
  lockAllowsFetchAndMerge: Boolean
  lockBranch: Boolean
  pattern: String
  pushActorIds: [ID!]
  requireLastPushApproval: Boolean
  requiredApprovingReviewCount: Int
  requiredDeploymentEnvironments: [String!]
  requiredStatusCheckContexts: [String!]
  requiredStatusChecks: [RequiredStatusCheckInput!]
  requiresApprovingReviews: Boolean
  requiresCodeOwnerReviews: Boolean
  requiresCommitSignatures: Boolean
  requiresConversationResolution: Boolean
  requiresDeployments: Boolean
  requiresLinearHistory: Boolean
  requiresStatusChecks: Boolean
  requiresStrictStatusChecks: Boolean
  restrictsPushes: Boolean
  restrictsReviewDismissals: Boolean
  reviewDismissalActorIds: [ID!]
}

type UpdateBranchProtectionRulePayload {
  branchProtectionRule: BranchProtectionRule
  clientMutationId: String
}

input UpdatePullRequestInput {
  assigneeIds: [ID!]
  baseRefName: String
  body: String
  clientMutationId: String
  labelIds: [ID!]
  maintainerCanModify: Boolean
  milestoneId: ID
  projectIds: [ID!]
  pullRequestId: ID!
  state: PullRequestUpdateState
  title: String
}

type UpdatePullRequestPayload {
  clientMutationId: String
  pullRequest: PullRequest
}

input UpdateRefInput {
  clientMutationId: String
  force: Boolean = false
  oid: GitObjectID!
  refId: ID!
}

type UpdateRefPayload {
  clientMutationId: String
  ref: Ref
}

type User implements Actor & Node & RepositoryOwner {
  avatarUrl(size: Int): URI!
  databaseId: Int
  id: ID!
  login: String!
  name: String
  resourcePath: URI!
  url: URI!
}

type UserConnection {
  edges: [UserEdge]
  nodes: [User]
  pageInfo: PageInfo!
  totalCount: Int!
}

type UserEdge {
  cursor: String!
  node: User
}

type Workflow implements Node {
  id: ID!
  name: String!
}

type WorkflowRun implements Node {
  id: ID!
  workflow: Workflow!
}"""
